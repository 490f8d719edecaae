//! CESQL tokens.

use super::{CompileError, ErrorKind};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    /// An identifier or keyword, as written (keywords are matched case-insensitively).
    Word(String),
    Int(i64),
    Str(String),
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A token and the 1-based column it starts at.
#[derive(Clone, Debug)]
pub struct Token {
    pub tok: Tok,
    pub column: usize,
}

fn err(message: impl Into<String>, column: usize) -> CompileError {
    CompileError {
        kind: ErrorKind::Parse,
        message: message.into(),
        column,
    }
}

pub fn lex(text: &str) -> Result<Vec<Token>, CompileError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let single = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            ',' => Some(Tok::Comma),
            '+' => Some(Tok::Plus),
            '-' => Some(Tok::Minus),
            '*' => Some(Tok::Star),
            '/' => Some(Tok::Slash),
            '%' => Some(Tok::Percent),
            '=' => Some(Tok::Eq),
            _ => None,
        };
        if let Some(tok) = single {
            out.push(Token { tok, column });
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        let (tok, len) = match (c, next) {
            ('!', Some('=')) => (Tok::NotEq, 2),
            ('<', Some('>')) => (Tok::NotEq, 2),
            ('<', Some('=')) => (Tok::Le, 2),
            ('>', Some('=')) => (Tok::Ge, 2),
            ('<', _) => (Tok::Lt, 1),
            ('>', _) => (Tok::Gt, 1),
            ('\'' | '"', _) => {
                let (s, end) = string(&chars, i)?;
                out.push(Token {
                    tok: Tok::Str(s),
                    column,
                });
                i = end;
                continue;
            }
            (d, _) if d.is_ascii_digit() => {
                let start = i;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let digits: String = chars[start..i].iter().collect();
                let n = digits
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n <= i64::from(i32::MAX) + 1)
                    .ok_or_else(|| {
                        err(
                            format!("integer {digits} is out of the 32-bit range"),
                            column,
                        )
                    })?;
                out.push(Token {
                    tok: Tok::Int(n),
                    column,
                });
                continue;
            }
            (w, _) if w.is_ascii_alphanumeric() || w == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Word(chars[start..i].iter().collect()),
                    column,
                });
                continue;
            }
            (other, _) => return Err(err(format!("unexpected character {other:?}"), column)),
        };
        out.push(Token { tok, column });
        i += len;
    }
    Ok(out)
}

/// A `'…'` or `"…"` literal starting at `start`; only the delimiter can be escaped (`\'`, `\"`).
fn string(chars: &[char], start: usize) -> Result<(String, usize), CompileError> {
    let quote = chars[start];
    let mut s = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if chars.get(i + 1) == Some(&quote) => {
                s.push(quote);
                i += 2;
            }
            c if c == quote => return Ok((s, i + 1)),
            c => {
                s.push(c);
                i += 1;
            }
        }
    }
    Err(err("unterminated string literal", start + 1))
}
