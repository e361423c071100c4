//! The parser: recursive descent over the streaming lexer, building the graph as it reads.
//!
//! Every node is checked as it is read (arity, result count, quantization parameters, inferred
//! types), so that errors point at the line and column of the offending node; the whole graph is
//! then checked by [`crate::verify::verify`], whose error is returned as is.

use super::lexer::{Lexer, Pos, Tok, Token, ValRef};
use super::ops::{self, AttrVal, Attrs};
use super::print::type_str;
use super::quote;
use crate::{DType, Dim, Graph, IrError, QuantError, QuantParams, Shape, Tensor, TensorData, TensorType, Value};
use half::{bf16, f16};
use std::collections::HashMap;

type Result<T> = std::result::Result<T, IrError>;

/// How deeply attribute values may nest (`[[1]]` is depth 2); bounds the recursion on any input.
const MAX_ATTR_DEPTH: usize = 8;

pub(super) fn parse(text: &str) -> Result<Graph> {
    let mut p = Parser::new(text)?;
    let g = p.graph()?;
    crate::verify::verify(&g)?;
    Ok(g)
}

/// Checks the quantization parameters of a declared type (a graph input or a constant, whose
/// types no inference checks): valid, and per-axis ones on an axis of the shape with one pair per
/// index.
/// The fixed dims of a constant's type (`what` in the error).
fn fixed_dims(ty: &TensorType, what: &str, ty_pos: Pos) -> Result<Vec<usize>> {
    ty.shape
        .as_fixed()
        .ok_or_else(|| ty_pos.err(format!("{what}: a constant's type must have a fixed shape, got {}", type_str(ty))))
}

/// The tensor of `data` read for a constant of type `ty` with fixed `dims`, which must hold
/// exactly that many values.
fn tensor_of(ty: &TensorType, dims: Vec<usize>, data: TensorData, what: &str, data_pos: Pos) -> Result<Tensor> {
    let n = data.len();
    let want = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    Tensor::new(dims, data).ok_or_else(|| {
        let want = want.map_or("more than fit in memory".to_string(), |w| w.to_string());
        data_pos.err(format!("{what} has {n} values, but its type {} holds {want}", type_str(ty)))
    })
}

fn check_quant(t: &TensorType) -> std::result::Result<(), QuantError> {
    let Some(q) = &t.quant else { return Ok(()) };
    q.check()?;
    match q {
        QuantParams::PerTensor { .. } => {}
        QuantParams::PerAxis { axis, scales, .. } => match t.shape.0.get(*axis) {
            Some(Dim::Fixed(n)) if *n == scales.len() => {}
            Some(d) => return Err(QuantError::AxisScales { count: scales.len(), axis: *axis, size: d.clone() }),
            None => return Err(QuantError::AxisOutOfRange { axis: *axis, rank: t.rank() }),
        },
        QuantParams::PerGroup { .. } => {
            let shape = t.shape.as_fixed().ok_or_else(|| QuantError::GroupNeedsFixedShape { ty: type_str(t) })?;
            q.check_shape(&shape)?;
        }
    }
    Ok(())
}

/// [`check_quant`]'s error as a message: invalid parameters are introduced as such, parameters
/// that do not fit the shape speak for themselves.
fn quant_message(e: &QuantError) -> String {
    match e {
        QuantError::GroupSizeZero | QuantError::NoScales | QuantError::ZeroPoints { .. } | QuantError::Scale { .. } => {
            format!("quantization parameters: {e}")
        }
        _ => e.to_string(),
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    /// The lookahead token.
    tok: Token<'a>,
    /// Every value defined so far, by the name the text gives it.
    values: HashMap<ValRef, Value>,
}

type AttrItems<'a> = Vec<(&'a str, Pos, AttrVal<'a>, Pos)>;

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Result<Self> {
        let mut lex = Lexer::new(text);
        let tok = lex.next_token()?;
        Ok(Parser { lex, tok, values: HashMap::new() })
    }

    /// Moves to the next token and returns the one that was current.
    fn advance(&mut self) -> Result<Token<'a>> {
        let next = self.lex.next_token()?;
        Ok(std::mem::replace(&mut self.tok, next))
    }

    fn pos(&self) -> Pos {
        self.tok.pos
    }

    fn expected(&self, what: &str) -> IrError {
        self.tok.pos.err(format!("expected {what}, found {}", self.tok.tok))
    }

    fn at(&self, t: &Tok) -> bool {
        &self.tok.tok == t
    }

    fn eat(&mut self, t: &Tok) -> Result<bool> {
        if self.at(t) {
            self.advance()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn expect(&mut self, t: &Tok, what: &str) -> Result<Pos> {
        let pos = self.pos();
        if self.eat(t)? {
            Ok(pos)
        } else {
            Err(self.expected(what))
        }
    }

    fn keyword(&mut self, kw: &str) -> Result<Pos> {
        self.expect(&Tok::Ident(kw), &format!("`{kw}`"))
    }

    /// A quoted string.
    fn string(&mut self, what: &str) -> Result<String> {
        if !matches!(self.tok.tok, Tok::Str(_)) {
            return Err(self.expected(what));
        }
        match self.advance()?.tok {
            Tok::Str(s) => Ok(s),
            _ => Err(self.expected(what)),
        }
    }

    /// A graph or output name: a plain identifier or a quoted string.
    fn name(&mut self, what: &str) -> Result<String> {
        match self.tok.tok {
            Tok::Ident(s) if !s.contains('*') => {
                self.advance()?;
                Ok(s.to_string())
            }
            Tok::Ident(s) => Err(self.pos().err(format!("a name containing `*` must be quoted: {}", quote(s)))),
            Tok::Str(_) => self.string(what),
            _ => Err(self.expected(what)),
        }
    }

    /// A value reference token.
    fn val_ref(&mut self, what: &str) -> Result<(ValRef, Pos)> {
        let pos = self.pos();
        match &self.tok.tok {
            Tok::Val(_) => match self.advance()?.tok {
                Tok::Val(r) => Ok((r, pos)),
                _ => Err(pos.err(format!("expected {what}"))),
            },
            _ => Err(self.expected(what)),
        }
    }

    /// A value that is already defined.
    fn use_value(&mut self, what: &str) -> Result<(Value, ValRef, Pos)> {
        let (r, pos) = self.val_ref(what)?;
        match self.values.get(&r) {
            Some(v) => Ok((*v, r, pos)),
            None => Err(pos.err(format!("unknown value {r} (values must be defined before they are used)"))),
        }
    }

    // ------------------------------------------------------------ literals

    fn f32_lit(&mut self, what: &str) -> Result<f32> {
        let x = match self.tok.tok {
            Tok::Num(s) | Tok::Ident(s) => ops::parse_f32(s),
            _ => None,
        };
        match (x, &self.tok.tok) {
            (Some(x), _) => {
                self.advance()?;
                Ok(x)
            }
            (None, Tok::Num(s)) => Err(self.pos().err(format!("number `{s}` is out of range for f32"))),
            (None, _) => Err(self.expected(what)),
        }
    }

    fn i64_lit(&mut self, what: &str) -> Result<(i64, Pos)> {
        let pos = self.pos();
        match self.tok.tok {
            Tok::Num(s) if s.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
                let x = s.parse::<i64>().map_err(|_| pos.err(format!("integer `{s}` is out of range")))?;
                self.advance()?;
                Ok((x, pos))
            }
            _ => Err(self.expected(what)),
        }
    }

    /// A float literal read exactly as f64.
    fn f64_lit(&mut self, what: &str) -> Result<f64> {
        let x = match self.tok.tok {
            Tok::Num(s) | Tok::Ident(s) => ops::parse_f64(s),
            _ => None,
        };
        match (x, &self.tok.tok) {
            (Some(x), _) => {
                self.advance()?;
                Ok(x)
            }
            (None, Tok::Num(s)) => Err(self.pos().err(format!("number `{s}` is out of range for f64"))),
            (None, _) => Err(self.expected(what)),
        }
    }

    /// A u64 literal (beyond the i64 range of the other integers).
    fn u64_lit(&mut self, what: &str) -> Result<u64> {
        let pos = self.pos();
        match self.tok.tok {
            Tok::Num(s) if s.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
                let x = s.parse::<u64>().map_err(|_| pos.err(format!("{s} is out of range for u64")))?;
                self.advance()?;
                Ok(x)
            }
            _ => Err(self.expected(what)),
        }
    }

    fn int_lit<T: TryFrom<i64>>(&mut self, what: &str, range: &str) -> Result<T> {
        let (x, pos) = self.i64_lit(what)?;
        T::try_from(x).map_err(|_| pos.err(format!("{x} is out of range for {range}")))
    }

    // ------------------------------------------------------------ types

    fn ty(&mut self) -> Result<TensorType> {
        let pos = self.pos();
        let dtype = match self.tok.tok {
            Tok::Ident(s) => s.parse::<DType>().map_err(|e| pos.err(e.to_string()))?,
            _ => return Err(self.expected("a type such as `f32[N,3]`")),
        };
        self.advance()?;
        let quant = if self.at(&Tok::Lt) { Some(self.quant()?) } else { None };
        let shape = self.shape()?;
        Ok(TensorType { dtype, shape, quant })
    }

    /// `<scale:zp>`, `<axis=A: s0:z0, s1:z1, ...>` or `<axis=A group=G: s0:z0, ...>`.
    fn quant(&mut self) -> Result<QuantParams> {
        self.expect(&Tok::Lt, "`<`")?;
        let q = if self.eat(&Tok::Ident("axis"))? {
            self.expect(&Tok::Eq, "`=` after `axis`")?;
            let axis = self.int_lit::<usize>("the quantization axis", "an axis")?;
            let group_size = if self.eat(&Tok::Ident("group"))? {
                self.expect(&Tok::Eq, "`=` after `group`")?;
                Some(self.int_lit::<usize>("the group size", "a group size")?)
            } else {
                None
            };
            self.expect(&Tok::Colon, "`:` after the quantization axis (or group size)")?;
            let (mut scales, mut zero_points) = (vec![], vec![]);
            if !self.at(&Tok::Gt) {
                loop {
                    scales.push(self.f32_lit("a scale")?);
                    self.expect(&Tok::Colon, "`:` between scale and zero point")?;
                    zero_points.push(self.int_lit::<i32>("a zero point", "an i32 zero point")?);
                    if !self.eat(&Tok::Comma)? {
                        break;
                    }
                }
            }
            match group_size {
                Some(group_size) => QuantParams::PerGroup { axis, group_size, scales, zero_points },
                None => QuantParams::PerAxis { axis, scales, zero_points },
            }
        } else {
            let scale = self.f32_lit("a scale or `axis=`")?;
            self.expect(&Tok::Colon, "`:` between scale and zero point")?;
            let zero_point = self.int_lit::<i32>("a zero point", "an i32 zero point")?;
            QuantParams::PerTensor { scale, zero_point }
        };
        self.expect(&Tok::Gt, "`>` closing the quantization parameters")?;
        Ok(q)
    }

    fn shape(&mut self) -> Result<Shape> {
        self.expect(&Tok::LBracket, "`[` and the shape")?;
        let mut dims = vec![];
        if self.eat(&Tok::RBracket)? {
            return Ok(Shape(dims));
        }
        loop {
            let pos = self.pos();
            let d = match &self.tok.tok {
                Tok::Num(s) if s.bytes().all(|b| b.is_ascii_digit()) => {
                    Dim::Fixed(s.parse().map_err(|_| pos.err(format!("dimension `{s}` is too large")))?)
                }
                Tok::Ident(s) if super::is_plain_dim(s) => Dim::Sym(s.to_string()),
                Tok::Str(s) => Dim::Sym(s.clone()),
                _ => return Err(self.expected("a dimension (a size, a symbol such as `N`, or a quoted symbol)")),
            };
            self.advance()?;
            dims.push(d);
            if self.eat(&Tok::RBracket)? {
                return Ok(Shape(dims));
            }
            self.expect(&Tok::Comma, "`,` or `]` in the shape")?;
        }
    }

    // ------------------------------------------------------------ the graph

    fn graph(&mut self) -> Result<Graph> {
        self.keyword("graph")?;
        let mut g = Graph::new(self.name("the graph's name")?);
        self.expect(&Tok::LParen, "`(` and the graph's inputs")?;
        if !self.eat(&Tok::RParen)? {
            loop {
                let (r, pos) = self.val_ref("a graph input such as `%x`")?;
                let name = match &r {
                    ValRef::Name(n) => n.clone(),
                    ValRef::Num(_) => {
                        return Err(pos.err(format!("graph inputs are named: {r} is the form of a node's result")))
                    }
                };
                if self.values.contains_key(&r) {
                    return Err(pos.err(format!("graph input {r} is declared twice")));
                }
                self.expect(&Tok::Colon, "`:` and the input's type")?;
                let ty_pos = self.pos();
                let ty = self.ty()?;
                check_quant(&ty).map_err(|e| ty_pos.err(format!("graph input {r}: {}", quant_message(&e))))?;
                // `wire W`: the element type the source model declares (see `crate::wire`).
                if self.eat(&Tok::Ident("wire"))? {
                    let wpos = self.pos();
                    let w = match self.tok.tok {
                        Tok::Ident(s) => s.parse::<crate::WireType>().map_err(|e| wpos.err(e.to_string()))?,
                        _ => return Err(wpos.err(format!("expected a wire type after `wire`, found {}", self.tok.tok))),
                    };
                    self.advance()?;
                    if w.dtype() != ty.dtype {
                        return Err(wpos.err(format!(
                            "graph input {r} is declared {w}, which the IR holds as {}, not {}",
                            w.dtype(),
                            ty.dtype
                        )));
                    }
                    g.set_wire(name.clone(), w);
                }
                if matches!(self.tok.tok, Tok::Digest(_)) {
                    return Err(self.pos().err(format!(
                        "specialized input {r} is printed in summary form and cannot be parsed; print with full \
                         constants"
                    )));
                }
                if self.eat(&Tok::Eq)? {
                    // `%name: TYPE = [values]`: an input the graph was specialized on.
                    let what = format!("specialized input {r}");
                    let data_pos = self.pos();
                    let data = self.const_data(ty.dtype)?;
                    let t = tensor_of(&ty, fixed_dims(&ty, &what, ty_pos)?, data, &what, data_pos)?;
                    if ty.quant.is_some() {
                        return Err(ty_pos.err(format!("specialized input {r} cannot have a quantized type")));
                    }
                    if g.specialized().iter().any(|s| s.name == name) {
                        return Err(pos.err(format!("graph input {r} is declared twice")));
                    }
                    g.add_specialized(name, std::sync::Arc::new(t));
                } else {
                    let v = g.add_input(name, ty);
                    self.values.insert(r, v);
                }
                if self.eat(&Tok::RParen)? {
                    break;
                }
                self.expect(&Tok::Comma, "`,` or `)`")?;
            }
        }
        self.expect(&Tok::Arrow, "`->` and the graph's outputs")?;
        self.expect(&Tok::LParen, "`(` and the graph's outputs")?;
        let mut outputs: Vec<(String, TensorType)> = vec![];
        if !self.eat(&Tok::RParen)? {
            loop {
                let pos = self.pos();
                let name = self.name("an output name")?;
                if outputs.iter().any(|(n, _)| *n == name) {
                    return Err(pos.err(format!("output {} is declared twice", super::name(&name))));
                }
                self.expect(&Tok::Colon, "`:` and the output's type")?;
                outputs.push((name, self.ty()?));
                if self.eat(&Tok::RParen)? {
                    break;
                }
                self.expect(&Tok::Comma, "`,` or `)`")?;
            }
        }
        self.expect(&Tok::LBrace, "`{` opening the graph's body")?;
        while !self.at(&Tok::Ident("return")) {
            self.statement(&mut g)?;
        }
        let ret = self.keyword("return")?;
        let mut values = vec![];
        if !self.at(&Tok::RBrace) {
            loop {
                values.push(self.use_value("a returned value")?);
                if !self.eat(&Tok::Comma)? {
                    break;
                }
            }
        }
        if values.len() != outputs.len() {
            return Err(ret.err(format!(
                "the graph declares {} outputs but returns {} values",
                outputs.len(),
                values.len()
            )));
        }
        for ((name, ty), (v, r, pos)) in outputs.into_iter().zip(values) {
            let vt = g.value_type(v);
            if *vt != ty {
                return Err(pos.err(format!(
                    "{r} is {} but output {} is declared {}",
                    type_str(vt),
                    super::name(&name),
                    type_str(&ty)
                )));
            }
            g.add_output(name, v);
        }
        self.expect(&Tok::RBrace, "`}` closing the graph")?;
        if !self.at(&Tok::Eof) {
            return Err(self.expected("end of input after the graph"));
        }
        Ok(g)
    }

    /// `# "name"` and an optional `from ["a", "b"]`.
    fn node_name(&mut self) -> Result<(String, Vec<String>)> {
        self.expect(&Tok::Hash, "`# \"name\"` after the node")?;
        let name = self.string("the node's name as a quoted string")?;
        let mut from = vec![];
        if self.eat(&Tok::Ident("from"))? {
            self.expect(&Tok::LBracket, "`[` after `from`")?;
            if !self.eat(&Tok::RBracket)? {
                loop {
                    from.push(self.string("an original node name as a quoted string")?);
                    if self.eat(&Tok::RBracket)? {
                        break;
                    }
                    self.expect(&Tok::Comma, "`,` or `]`")?;
                }
            }
        }
        Ok((name, from))
    }

    fn statement(&mut self, g: &mut Graph) -> Result<()> {
        let mut results: Vec<(ValRef, Pos)> = vec![];
        loop {
            let (r, pos) = self.val_ref("a result such as `%0 =`, or `return`")?;
            if self.values.contains_key(&r) || results.iter().any(|(x, _)| *x == r) {
                return Err(pos.err(format!("{r} is defined twice")));
            }
            results.push((r, pos));
            if !self.eat(&Tok::Comma)? {
                break;
            }
        }
        self.expect(&Tok::Eq, "`=`")?;
        let op_pos = self.pos();
        let op_name = match self.tok.tok {
            Tok::Ident(s) => s,
            _ => return Err(self.expected("an op name")),
        };
        self.advance()?;
        match op_name {
            "const" => return self.constant(g, results, op_pos),
            "input" => return Err(op_pos.err("graph inputs are declared in the graph's signature, not as nodes")),
            _ if !ops::is_op_name(op_name) => return Err(op_pos.err(format!("unknown op `{op_name}`"))),
            _ => {}
        }

        let mut inputs: Vec<Option<Value>> = vec![];
        if !matches!(self.tok.tok, Tok::LBrace | Tok::Colon) {
            loop {
                if self.eat(&Tok::Ident("_"))? {
                    inputs.push(None);
                } else if matches!(self.tok.tok, Tok::Val(_)) {
                    inputs.push(Some(self.use_value("an operand")?.0));
                } else {
                    return Err(self.expected("an operand (`%0`, `%name`, or `_` for an absent input)"));
                }
                if !self.eat(&Tok::Comma)? {
                    break;
                }
            }
        }
        let brace = self.pos();
        let (items, attr_pos) = if self.at(&Tok::LBrace) { (self.attrs()?, brace) } else { (vec![], op_pos) };
        let op = ops::build_op(op_name, Attrs::new(op_name, attr_pos, items))?
            .ok_or_else(|| op_pos.err(format!("unknown op `{op_name}`")))?;

        let colon = self.expect(&Tok::Colon, "`:` and the result types")?;
        let mut types = vec![];
        loop {
            let pos = self.pos();
            types.push((self.ty()?, pos));
            if !self.eat(&Tok::Comma)? {
                break;
            }
        }
        let (name, from) = self.node_name()?;

        // The checks of the verifier, located.
        let what = format!("`{op_name}` {}", quote(&name));
        if types.len() != results.len() {
            return Err(colon.err(format!("{what}: {} results but {} types", results.len(), types.len())));
        }
        if op.num_outputs() != results.len() {
            return Err(op_pos.err(format!(
                "{what} has {} results, the text names {}",
                op.num_outputs(),
                results.len()
            )));
        }
        let (lo, hi) = op.arity();
        if inputs.len() < lo || inputs.len() > hi {
            return Err(op_pos.err(format!("{what} takes {} operands, got {}", op.arity_text(), inputs.len())));
        }
        for (t, pos) in &types {
            if let Some(q) = &t.quant {
                q.check().map_err(|m| pos.err(format!("{what}: quantization parameters: {m}")))?;
            }
        }
        let types: Vec<TensorType> = types.into_iter().map(|(t, _)| t).collect();
        let in_types: Vec<Option<&TensorType>> = inputs.iter().map(|v| v.map(|v| g.value_type(v))).collect();
        let inferred =
            crate::infer::infer(&op, &in_types, Some(&types)).map_err(|m| op_pos.err(format!("{what}: {m}")))?;
        if inferred != types {
            let show = |ts: &[TensorType]| ts.iter().map(type_str).collect::<Vec<_>>().join(", ");
            return Err(colon.err(format!(
                "{what}: result type is {}, but the inputs give {}",
                show(&types),
                show(&inferred)
            )));
        }

        let id = g.add_node_unchecked(op, inputs, types, name);
        g.node_mut(id).from = from;
        for (port, (r, _)) in results.into_iter().enumerate() {
            self.values.insert(r, Value::new(id, port));
        }
        Ok(())
    }

    /// The rest of `%r = const TYPE = [v, ...]  # "name"`.
    fn constant(&mut self, g: &mut Graph, results: Vec<(ValRef, Pos)>, op_pos: Pos) -> Result<()> {
        let r = match <[_; 1]>::try_from(results) {
            Ok([(r, _)]) => r,
            Err(_) => return Err(op_pos.err("a constant has exactly one result")),
        };
        let ty_pos = self.pos();
        let ty = self.ty()?;
        if matches!(self.tok.tok, Tok::Digest(_)) {
            return Err(self.pos().err(format!(
                "constant {r} is printed in summary form and cannot be parsed; print with full constants"
            )));
        }
        self.expect(&Tok::Eq, "`=` and the constant's values")?;
        let data_pos = self.pos();
        let data = self.const_data(ty.dtype)?;
        let (name, from) = self.node_name()?;
        let what = format!("constant {r}");
        let dims = fixed_dims(&ty, &what, ty_pos)?;
        check_quant(&ty).map_err(|e| ty_pos.err(format!("{what}: {}", quant_message(&e))))?;
        let t = tensor_of(&ty, dims, data, &what, data_pos)?;
        let v = g.add_const_typed(name, t, ty);
        g.node_mut(v.node).from = from;
        self.values.insert(r, v);
        Ok(())
    }

    /// `[v, ...]` of `dtype`, flat.
    fn const_data(&mut self, dtype: DType) -> Result<TensorData> {
        self.expect(&Tok::LBracket, "`[` and the constant's values")?;
        let float = |p: &mut Self| p.f32_lit("a number");
        Ok(match dtype {
            DType::F32 => TensorData::F32(self.elements(float)?),
            DType::F16 => TensorData::F16(self.elements(|p| float(p).map(f16::from_f32))?),
            DType::BF16 => TensorData::BF16(self.elements(|p| float(p).map(bf16::from_f32))?),
            DType::I8 => TensorData::I8(self.elements(|p| p.int_lit("an integer", "i8"))?),
            DType::U8 => TensorData::U8(self.elements(|p| p.int_lit("an integer", "u8"))?),
            DType::I32 => TensorData::I32(self.elements(|p| p.int_lit("an integer", "i32"))?),
            DType::I64 => TensorData::I64(self.elements(|p| p.int_lit("an integer", "i64"))?),
            DType::F64 => TensorData::F64(self.elements(|p| p.f64_lit("a number"))?),
            DType::I16 => TensorData::I16(self.elements(|p| p.int_lit("an integer", "i16"))?),
            DType::U16 => TensorData::U16(self.elements(|p| p.int_lit("an integer", "u16"))?),
            DType::U32 => TensorData::U32(self.elements(|p| p.int_lit("an integer", "u32"))?),
            DType::U64 => TensorData::U64(self.elements(|p| p.u64_lit("an integer"))?),
            DType::Bool => TensorData::Bool(self.elements(|p| {
                if p.eat(&Tok::Ident("true"))? {
                    Ok(true)
                } else if p.eat(&Tok::Ident("false"))? {
                    Ok(false)
                } else {
                    Err(p.expected("`true` or `false`"))
                }
            })?),
        })
    }

    /// Elements up to the closing `]` (the `[` is consumed).
    fn elements<T>(&mut self, mut f: impl FnMut(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        let mut v = vec![];
        if self.eat(&Tok::RBracket)? {
            return Ok(v);
        }
        loop {
            v.push(f(self)?);
            if self.eat(&Tok::RBracket)? {
                return Ok(v);
            }
            self.expect(&Tok::Comma, "`,` or `]`")?;
        }
    }

    // ------------------------------------------------------------ attributes

    /// `{key=value, ...}`.
    fn attrs(&mut self) -> Result<AttrItems<'a>> {
        self.expect(&Tok::LBrace, "`{`")?;
        let mut items: AttrItems<'a> = vec![];
        if self.eat(&Tok::RBrace)? {
            return Ok(items);
        }
        loop {
            let kpos = self.pos();
            let key = match self.tok.tok {
                Tok::Ident(s) => s,
                _ => return Err(self.expected("an attribute name")),
            };
            if items.iter().any(|(k, ..)| *k == key) {
                return Err(kpos.err(format!("attribute `{key}` is given twice")));
            }
            self.advance()?;
            self.expect(&Tok::Eq, "`=` after the attribute name")?;
            let vpos = self.pos();
            let v = self.attr_value(1)?;
            items.push((key, kpos, v, vpos));
            if self.eat(&Tok::RBrace)? {
                return Ok(items);
            }
            self.expect(&Tok::Comma, "`,` or `}`")?;
        }
    }

    fn attr_value(&mut self, depth: usize) -> Result<AttrVal<'a>> {
        if depth > MAX_ATTR_DEPTH {
            return Err(self.pos().err("attribute values nest too deeply"));
        }
        match self.tok.tok {
            Tok::Num(s) => {
                self.advance()?;
                Ok(AttrVal::Num(s))
            }
            Tok::Ident(s) => {
                self.advance()?;
                if self.eat(&Tok::LParen)? {
                    Ok(AttrVal::Call(s, self.attr_list(&Tok::RParen, "`)`", depth + 1)?))
                } else {
                    Ok(AttrVal::Ident(s))
                }
            }
            Tok::LBracket => {
                self.advance()?;
                Ok(AttrVal::List(self.attr_list(&Tok::RBracket, "`]`", depth + 1)?))
            }
            Tok::Str(ref s) => {
                let s = s.clone();
                self.advance()?;
                Ok(AttrVal::Str(s))
            }
            _ => Err(self.expected("an attribute value")),
        }
    }

    /// Values up to `close` (the opening bracket is consumed).
    fn attr_list(&mut self, close: &Tok, close_str: &str, depth: usize) -> Result<Vec<(AttrVal<'a>, Pos)>> {
        let mut v = vec![];
        if self.eat(close)? {
            return Ok(v);
        }
        loop {
            let pos = self.pos();
            v.push((self.attr_value(depth)?, pos));
            if self.eat(close)? {
                return Ok(v);
            }
            self.expect(&Tok::Comma, &format!("`,` or {close_str}"))?;
        }
    }
}

/// Parses `{attrs}` (or nothing) for the op named `op_name`: the attribute half of a node line,
/// for the printer/parser agreement test.
#[cfg(test)]
pub(super) fn parse_op_for_test(op_name: &str, attrs: &str) -> Result<crate::Op> {
    let mut p = Parser::new(attrs)?;
    let pos = p.pos();
    let items = if p.at(&Tok::LBrace) { p.attrs()? } else { vec![] };
    if !p.at(&Tok::Eof) {
        return Err(p.expected("end of input"));
    }
    ops::build_op(op_name, Attrs::new(op_name, pos, items))?.ok_or_else(|| pos.err(format!("unknown op `{op_name}`")))
}
