//! CESQL tokens → expression tree (recursive descent, one function per precedence level).

use super::eval::Value;
use super::lexer::{Tok, Token};
use super::{CompileError, ErrorKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogicOp {
    And,
    Or,
    Xor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// The built-in functions, resolved at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    Abs,
    Int,
    Bool,
    String,
    IsInt,
    IsBool,
}

impl Func {
    /// The function called `name` (any case) taking `arity` arguments.
    fn resolve(name: &str, arity: usize) -> Option<Func> {
        let f = match name.to_ascii_uppercase().as_str() {
            "LENGTH" => Func::Length,
            "CONCAT" => return Some(Func::Concat),
            "CONCAT_WS" => return (arity >= 1).then_some(Func::ConcatWs),
            "LOWER" => Func::Lower,
            "UPPER" => Func::Upper,
            "TRIM" => Func::Trim,
            "LEFT" => Func::Left,
            "RIGHT" => Func::Right,
            "SUBSTRING" => return (arity == 2 || arity == 3).then_some(Func::Substring),
            "ABS" => Func::Abs,
            "INT" => Func::Int,
            "BOOL" => Func::Bool,
            "STRING" => Func::String,
            "IS_INT" => Func::IsInt,
            "IS_BOOL" => Func::IsBool,
            _ => return None,
        };
        let want = match f {
            Func::Left | Func::Right => 2,
            _ => 1,
        };
        (arity == want).then_some(f)
    }
}

/// One element of a compiled `LIKE` pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LikeTok {
    Char(char),
    /// `_`: exactly one character.
    One,
    /// `%`: any run of characters.
    Any,
}

#[derive(Clone, Debug)]
pub enum Expr {
    Lit(Value),
    Attr(String),
    Exists(String),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Logic(LogicOp, Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Like {
        expr: Box<Expr>,
        pattern: Vec<LikeTok>,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        set: Vec<Expr>,
        negated: bool,
    },
    Call(Func, Vec<Expr>),
}

/// Deepest nesting of `NOT`, unary signs, parentheses and function calls: the parser
/// recurses on each, so a hostile filter (60,000 × `NOT `) must not exhaust the stack.
pub const MAX_NESTING: usize = 64;
/// Longest expression, in tokens: chains of operators make trees as deep as they are long,
/// and evaluating (and dropping) a tree recurses on its depth.
pub const MAX_TOKENS: usize = 2048;

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    /// Column just past the text, for "unexpected end".
    end: usize,
    nesting: usize,
}

pub fn parse(tokens: &[Token], text: &str) -> Result<Expr, CompileError> {
    let mut p = Parser {
        tokens,
        pos: 0,
        end: text.chars().count() + 1,
        nesting: 0,
    };
    if tokens.is_empty() {
        return Err(p.error("empty expression"));
    }
    if tokens.len() > MAX_TOKENS {
        return Err(CompileError {
            kind: ErrorKind::Parse,
            message: format!(
                "the expression has {} tokens; at most {MAX_TOKENS}",
                tokens.len()
            ),
            column: 1,
        });
    }
    let e = p.or()?;
    if p.pos < tokens.len() {
        return Err(p.error("unexpected token after the end of the expression"));
    }
    Ok(e)
}

impl Parser<'_> {
    /// One level deeper, refused past [`MAX_NESTING`].
    fn deeper(&mut self) -> Result<(), CompileError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(CompileError {
                kind: ErrorKind::Parse,
                message: format!("the expression nests deeper than {MAX_NESTING} levels"),
                column: self.column(),
            });
        }
        Ok(())
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.tok)
    }

    fn column(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |t| t.column)
    }

    fn error(&self, message: &str) -> CompileError {
        let found = match self.peek() {
            None => "end of expression".to_string(),
            Some(t) => format!("{t:?}"),
        };
        CompileError {
            kind: ErrorKind::Parse,
            message: format!("{message} (found {found})"),
            column: self.column(),
        }
    }

    fn keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn keyword_at(&self, offset: usize, kw: &str) -> bool {
        matches!(self.tokens.get(self.pos + offset).map(|t| &t.tok), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> Result<(), CompileError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.error(&format!("expected {what}")))
        }
    }

    fn logic_level(
        &mut self,
        kw: &str,
        op: LogicOp,
        next: fn(&mut Self) -> Result<Expr, CompileError>,
    ) -> Result<Expr, CompileError> {
        let mut left = next(self)?;
        while self.keyword(kw) {
            self.pos += 1;
            let right = next(self)?;
            left = Expr::Logic(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn or(&mut self) -> Result<Expr, CompileError> {
        self.logic_level("OR", LogicOp::Or, Self::xor)
    }

    fn xor(&mut self) -> Result<Expr, CompileError> {
        self.logic_level("XOR", LogicOp::Xor, Self::and)
    }

    fn and(&mut self) -> Result<Expr, CompileError> {
        self.logic_level("AND", LogicOp::And, Self::not)
    }

    fn not(&mut self) -> Result<Expr, CompileError> {
        if self.keyword("NOT") {
            self.pos += 1;
            self.deeper()?;
            let inner = self.not()?;
            self.nesting -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, CompileError> {
        let mut left = self.additive()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Eq) => Some(CmpOp::Eq),
                Some(Tok::NotEq) => Some(CmpOp::NotEq),
                Some(Tok::Lt) => Some(CmpOp::Lt),
                Some(Tok::Le) => Some(CmpOp::Le),
                Some(Tok::Gt) => Some(CmpOp::Gt),
                Some(Tok::Ge) => Some(CmpOp::Ge),
                _ => None,
            };
            if let Some(op) = op {
                self.pos += 1;
                let right = self.additive()?;
                left = Expr::Cmp(op, Box::new(left), Box::new(right));
                continue;
            }
            let negated =
                self.keyword("NOT") && (self.keyword_at(1, "LIKE") || self.keyword_at(1, "IN"));
            if negated {
                self.pos += 1;
            }
            if self.keyword("LIKE") {
                self.pos += 1;
                let pattern = match self.peek() {
                    Some(Tok::Str(s)) => like_pattern(s),
                    _ => return Err(self.error("LIKE needs a string literal pattern")),
                };
                self.pos += 1;
                left = Expr::Like {
                    expr: Box::new(left),
                    pattern,
                    negated,
                };
            } else if self.keyword("IN") {
                self.pos += 1;
                self.expect(&Tok::LParen, "'(' to open the IN set")?;
                self.deeper()?;
                let mut set = vec![self.or()?];
                while self.eat(&Tok::Comma) {
                    set.push(self.or()?);
                }
                self.nesting -= 1;
                self.expect(&Tok::RParen, "')' to close the IN set")?;
                left = Expr::In {
                    expr: Box::new(left),
                    set,
                    negated,
                };
            } else {
                return Ok(left);
            }
        }
    }

    fn additive(&mut self) -> Result<Expr, CompileError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Plus) => ArithOp::Add,
                Some(Tok::Minus) => ArithOp::Sub,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.multiplicative()?;
            left = Expr::Arith(op, Box::new(left), Box::new(right));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, CompileError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Star) => ArithOp::Mul,
                Some(Tok::Slash) => ArithOp::Div,
                Some(Tok::Percent) => ArithOp::Rem,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::Arith(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, CompileError> {
        if self.eat(&Tok::Minus) {
            // A minus before a literal is part of it, so -2147483648 is a valid literal.
            if let Some(Tok::Int(n)) = self.peek() {
                let n = -*n;
                self.pos += 1;
                return Ok(Expr::Lit(Value::Int(n as i32)));
            }
            self.deeper()?;
            let inner = self.unary()?;
            self.nesting -= 1;
            return Ok(Expr::Neg(Box::new(inner)));
        }
        if self.eat(&Tok::Plus) {
            self.deeper()?;
            let inner = self.unary()?;
            self.nesting -= 1;
            return Ok(inner);
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, CompileError> {
        let column = self.column();
        let Some(tok) = self.peek().cloned() else {
            return Err(self.error("expected a value"));
        };
        self.pos += 1;
        match tok {
            Tok::Int(n) => i32::try_from(n)
                .map(|n| Expr::Lit(Value::Int(n)))
                .map_err(|_| CompileError {
                    kind: ErrorKind::Parse,
                    message: format!("integer {n} is out of the 32-bit range"),
                    column,
                }),
            Tok::Str(s) => Ok(Expr::Lit(Value::Str(s))),
            Tok::LParen => {
                self.deeper()?;
                let e = self.or()?;
                self.nesting -= 1;
                self.expect(&Tok::RParen, "')'")?;
                Ok(e)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("TRUE") => Ok(Expr::Lit(Value::Bool(true))),
            Tok::Word(w) if w.eq_ignore_ascii_case("FALSE") => Ok(Expr::Lit(Value::Bool(false))),
            Tok::Word(w) if w.eq_ignore_ascii_case("EXISTS") => {
                let column = self.column();
                match self.peek().cloned() {
                    Some(Tok::Word(id)) => {
                        self.pos += 1;
                        Ok(Expr::Exists(identifier(&id, column)?))
                    }
                    _ => Err(self.error("EXISTS needs an attribute name")),
                }
            }
            Tok::Word(w) if self.peek() == Some(&Tok::LParen) => {
                self.pos += 1;
                let mut args = Vec::new();
                if !self.eat(&Tok::RParen) {
                    self.deeper()?;
                    args.push(self.or()?);
                    while self.eat(&Tok::Comma) {
                        args.push(self.or()?);
                    }
                    self.nesting -= 1;
                    self.expect(&Tok::RParen, "')' to close the function call")?;
                }
                let f = Func::resolve(&w, args.len()).ok_or_else(|| CompileError {
                    kind: ErrorKind::MissingFunction,
                    message: format!("no function {w} taking {} argument(s)", args.len()),
                    column,
                })?;
                Ok(Expr::Call(f, args))
            }
            Tok::Word(w) => Ok(Expr::Attr(identifier(&w, column)?)),
            _ => {
                self.pos -= 1;
                Err(self.error("expected a value"))
            }
        }
    }
}

const KEYWORDS: &[&str] = &[
    "AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS", "TRUE", "FALSE",
];

/// An attribute name: letters and digits, matched case-insensitively (attributes are lower-case).
fn identifier(word: &str, column: usize) -> Result<String, CompileError> {
    let ok = word.chars().all(|c| c.is_ascii_alphanumeric())
        && !KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word));
    if ok {
        Ok(word.to_ascii_lowercase())
    } else {
        Err(CompileError {
            kind: ErrorKind::Parse,
            message: format!("{word:?} is not an attribute name"),
            column,
        })
    }
}

/// `%` any run, `_` one character, `\%` and `\_` themselves; any other character (a lone `\`
/// included) itself.
fn like_pattern(s: &str) -> Vec<LikeTok> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('%') | Some('_')) => {
                if let Some(escaped) = chars.next() {
                    out.push(LikeTok::Char(escaped));
                }
            }
            '%' => out.push(LikeTok::Any),
            '_' => out.push(LikeTok::One),
            c => out.push(LikeTok::Char(c)),
        }
    }
    out
}
