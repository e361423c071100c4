//! `.npy` reading and writing. (Implementation in progress.)
