//! The lexer of the text form: a streaming tokenizer with line and column positions.
//!
//! Tokens borrow from the source where they can (identifiers, numbers), so that parsing a graph
//! with millions of inline constant values does not allocate per element.

use crate::IrError;
use std::fmt;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub fn err(self, msg: impl Into<String>) -> IrError {
        IrError::Parse { line: self.line, col: self.col, msg: msg.into() }
    }
}

/// A value reference: `%12` (a numbered result) or `%name` / `%"name"` (a named value).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum ValRef {
    Num(usize),
    Name(String),
}

impl fmt::Display for ValRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValRef::Num(n) => write!(f, "%{n}"),
            ValRef::Name(s) => write!(f, "%{}", super::name(s)),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok<'a> {
    /// `[A-Za-z_][A-Za-z0-9_.*]*`; contexts narrow what they accept.
    Ident(&'a str),
    /// A JSON-style double-quoted string, unescaped.
    Str(String),
    /// `-?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?`, or `-inf`.
    Num(&'a str),
    /// `%12`, `%name`, `%"name"`.
    Val(ValRef),
    /// `#` immediately followed by letters or digits: a summarized constant's digest.
    Digest(&'a str),
    /// `#` followed by anything else: starts a node's name.
    Hash,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Lt,
    Gt,
    Comma,
    Colon,
    Eq,
    Arrow,
    Eof,
}

impl fmt::Display for Tok<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "string {}", super::quote(s)),
            Tok::Num(s) => write!(f, "number `{s}`"),
            Tok::Val(v) => write!(f, "`{v}`"),
            Tok::Digest(s) => write!(f, "`#{s}`"),
            Tok::Hash => f.write_str("`#`"),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::LBracket => f.write_str("`[`"),
            Tok::RBracket => f.write_str("`]`"),
            Tok::LBrace => f.write_str("`{`"),
            Tok::RBrace => f.write_str("`}`"),
            Tok::Lt => f.write_str("`<`"),
            Tok::Gt => f.write_str("`>`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::Colon => f.write_str("`:`"),
            Tok::Eq => f.write_str("`=`"),
            Tok::Arrow => f.write_str("`->`"),
            Tok::Eof => f.write_str("end of input"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Token<'a> {
    pub tok: Tok<'a>,
    pub pos: Pos,
}

pub(super) struct Lexer<'a> {
    src: &'a str,
    /// Byte offset of the next character.
    at: usize,
    line: usize,
    col: usize,
    /// Whether any token has been produced (`//` comments are allowed only before the first).
    started: bool,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '*'
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Self {
        Lexer { src, at: 0, line: 1, col: 1, started: false }
    }

    fn pos(&self) -> Pos {
        Pos { line: self.line, col: self.col }
    }

    fn rest(&self) -> &'a str {
        self.src.get(self.at..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek2(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    /// Consumes characters while `f` holds and returns them.
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.at;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        self.src.get(start..self.at).unwrap_or("")
    }

    fn skip_space(&mut self) -> Result<(), IrError> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('/') if self.peek2() == Some('/') => {
                    if self.started {
                        return Err(self.pos().err("`//` comments are only allowed before `graph`"));
                    }
                    self.take_while(|c| c != '\n');
                }
                _ => return Ok(()),
            }
        }
    }

    /// The next token.
    pub fn next_token(&mut self) -> Result<Token<'a>, IrError> {
        self.skip_space()?;
        self.started = true;
        let pos = self.pos();
        let Some(c) = self.peek() else {
            return Ok(Token { tok: Tok::Eof, pos });
        };
        let tok = match c {
            '(' | ')' | '[' | ']' | '{' | '}' | '<' | '>' | ',' | ':' | '=' => {
                self.bump();
                match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    '{' => Tok::LBrace,
                    '}' => Tok::RBrace,
                    '<' => Tok::Lt,
                    '>' => Tok::Gt,
                    ',' => Tok::Comma,
                    ':' => Tok::Colon,
                    _ => Tok::Eq,
                }
            }
            '"' => Tok::Str(self.string()?),
            '%' => {
                self.bump();
                match self.peek() {
                    Some('"') => Tok::Val(ValRef::Name(self.string()?)),
                    Some(c) if c.is_ascii_digit() => {
                        let digits = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
                        let n = digits
                            .parse::<usize>()
                            .map_err(|_| pos.err(format!("invalid value number `%{digits}`")))?;
                        Tok::Val(ValRef::Num(n))
                    }
                    Some(c) if is_ident_start(c) => Tok::Val(ValRef::Name(self.take_while(is_ident_char).to_string())),
                    _ => return Err(pos.err("expected a value name or number after `%`")),
                }
            }
            '#' => {
                self.bump();
                if self.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
                    Tok::Digest(self.take_while(|c| c.is_ascii_alphanumeric()))
                } else {
                    Tok::Hash
                }
            }
            '-' => {
                if self.peek2() == Some('>') {
                    self.bump();
                    self.bump();
                    Tok::Arrow
                } else if self.peek2().is_some_and(|c| c.is_ascii_digit()) {
                    Tok::Num(self.number())
                } else if self.rest().starts_with("-inf")
                    && !self.rest().get(4..).and_then(|s| s.chars().next()).is_some_and(is_ident_char)
                {
                    let start = self.at;
                    for _ in 0..4 {
                        self.bump();
                    }
                    Tok::Num(self.src.get(start..self.at).unwrap_or("-inf"))
                } else {
                    return Err(pos.err("expected a number or `->` after `-`"));
                }
            }
            c if c.is_ascii_digit() => Tok::Num(self.number()),
            c if is_ident_start(c) => Tok::Ident(self.take_while(is_ident_char)),
            c => return Err(pos.err(format!("unexpected character {c:?}"))),
        };
        Ok(Token { tok, pos })
    }

    /// `-?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?`. A letter right after the number is an error
    /// reported by the parser (it sees an identifier where it expected a separator).
    fn number(&mut self) -> &'a str {
        let start = self.at;
        if self.peek() == Some('-') {
            self.bump();
        }
        self.take_while(|c| c.is_ascii_digit());
        if self.peek() == Some('.') {
            self.bump();
            self.take_while(|c| c.is_ascii_digit());
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let after = self.rest().get(1..).unwrap_or("");
            let digits_at = if after.starts_with(['+', '-']) { 1 } else { 0 };
            if after.get(digits_at..).and_then(|s| s.chars().next()).is_some_and(|c| c.is_ascii_digit()) {
                self.bump();
                if digits_at == 1 {
                    self.bump();
                }
                self.take_while(|c| c.is_ascii_digit());
            }
        }
        self.src.get(start..self.at).unwrap_or("")
    }

    /// A JSON-style string literal; the opening quote is the next character.
    fn string(&mut self) -> Result<String, IrError> {
        let start = self.pos();
        self.bump();
        let mut s = String::new();
        loop {
            let here = self.pos();
            match self.bump() {
                None => return Err(start.err("unterminated string")),
                Some('"') => return Ok(s),
                Some('\n') => return Err(start.err("unterminated string (strings cannot span lines)")),
                Some('\\') => {
                    let e = self.bump().ok_or_else(|| start.err("unterminated string"))?;
                    match e {
                        '"' => s.push('"'),
                        '\\' => s.push('\\'),
                        '/' => s.push('/'),
                        'b' => s.push('\u{8}'),
                        'f' => s.push('\u{c}'),
                        'n' => s.push('\n'),
                        'r' => s.push('\r'),
                        't' => s.push('\t'),
                        'u' => {
                            let hi = self.hex4(here)?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if !(self.bump() == Some('\\') && self.bump() == Some('u')) {
                                    return Err(here.err("unpaired surrogate in `\\u` escape"));
                                }
                                let lo = self.hex4(here)?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(here.err("unpaired surrogate in `\\u` escape"));
                                }
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            } else {
                                char::from_u32(hi)
                            };
                            s.push(c.ok_or_else(|| here.err("invalid `\\u` escape"))?);
                        }
                        c => return Err(here.err(format!("invalid escape `\\{c}` in string"))),
                    }
                }
                Some(c) if (c as u32) < 0x20 => {
                    return Err(here.err("control character in string (use an escape)"));
                }
                Some(c) => s.push(c),
            }
        }
    }

    fn hex4(&mut self, at: Pos) -> Result<u32, IrError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d =
                self.bump().and_then(|c| c.to_digit(16)).ok_or_else(|| at.err("expected 4 hex digits after `\\u`"))?;
            v = v * 16 + d;
        }
        Ok(v)
    }
}
