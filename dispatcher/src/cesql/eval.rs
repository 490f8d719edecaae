//! CESQL evaluation and the spec's implicit casts.

use super::parser::{ArithOp, CmpOp, Expr, Func, LikeTok, LogicOp};
use super::{ErrorKind, Outcome};
use broker::{AttrValue, Event};

/// A CESQL value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    Int(i32),
    Str(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Type {
    Bool,
    Int,
    Str,
}

impl Value {
    fn ty(&self) -> Type {
        match self {
            Value::Bool(_) => Type::Bool,
            Value::Int(_) => Type::Int,
            Value::Str(_) => Type::Str,
        }
    }

    fn zero(ty: Type) -> Value {
        match ty {
            Type::Bool => Value::Bool(false),
            Type::Int => Value::Int(0),
            Type::Str => Value::Str(String::new()),
        }
    }
}

/// The result of one sub-expression: a value and the first error met.
struct Ev {
    value: Value,
    error: Option<ErrorKind>,
}

impl Ev {
    fn ok(value: Value) -> Self {
        Self { value, error: None }
    }

    fn with(value: Value, error: Option<ErrorKind>) -> Self {
        Self { value, error }
    }
}

/// Evaluates `$e`; if it failed, the enclosing operator yields the zero value of `$ty` with
/// that error (an operand's error is not recovered from).
macro_rules! operand {
    ($ev:expr, $e:expr, $ty:expr) => {{
        let r = $ev.eval($e);
        if r.error.is_some() {
            return Ev::with(Value::zero($ty), r.error);
        }
        r.value
    }};
}

struct Evaluator<'a> {
    event: &'a Event,
    /// The first cast error met while the evaluation went on with a zero value.
    cast_error: Option<ErrorKind>,
}

pub fn evaluate(root: &Expr, event: &Event) -> Outcome {
    let mut ev = Evaluator {
        event,
        cast_error: None,
    };
    let r = ev.eval(root);
    Outcome {
        value: r.value,
        error: r.error.or(ev.cast_error),
    }
}

/// Casts `v` to `ty` implicitly; on failure, the zero value and a cast error.
fn cast(v: Value, ty: Type) -> Result<Value, Value> {
    match (v, ty) {
        (v, t) if v.ty() == t => Ok(v),
        (Value::Bool(b), Type::Int) => Ok(Value::Int(i32::from(b))),
        (Value::Bool(b), Type::Str) => Ok(Value::Str(b.to_string())),
        (Value::Int(i), Type::Str) => Ok(Value::Str(i.to_string())),
        (Value::Str(s), Type::Int) => s.parse::<i32>().map(Value::Int).map_err(|_| Value::Int(0)),
        (Value::Str(s), Type::Bool) => match s.to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(Value::Bool(false)),
        },
        // An integer is not implicitly a boolean (use BOOL()).
        (_, t) => Err(Value::zero(t)),
    }
}

impl Evaluator<'_> {
    fn cast(&mut self, v: Value, ty: Type) -> Value {
        cast(v, ty).unwrap_or_else(|zero| {
            self.cast_error.get_or_insert(ErrorKind::Cast);
            zero
        })
    }

    fn attribute(&self, name: &str) -> Option<Value> {
        self.event.attr(name).map(|v| match v {
            AttrValue::String(s) => Value::Str(s.clone()),
            AttrValue::Boolean(b) => Value::Bool(*b),
            AttrValue::Integer(i) => match i32::try_from(*i) {
                Ok(i) => Value::Int(i),
                Err(_) => Value::Str(i.to_string()),
            },
        })
    }

    fn eval(&mut self, e: &Expr) -> Ev {
        match e {
            Expr::Lit(v) => Ev::ok(v.clone()),
            Expr::Attr(name) => match self.attribute(name) {
                Some(v) => Ev::ok(v),
                None => Ev::with(Value::Bool(false), Some(ErrorKind::MissingAttribute)),
            },
            Expr::Exists(name) => Ev::ok(Value::Bool(self.event.attr(name).is_some())),
            Expr::Not(inner) => {
                let v = operand!(self, inner, Type::Bool);
                let b = self.cast(v, Type::Bool);
                Ev::ok(Value::Bool(b != Value::Bool(true)))
            }
            Expr::Neg(inner) => {
                let v = operand!(self, inner, Type::Int);
                match self.cast(v, Type::Int) {
                    Value::Int(i) => match i.checked_neg() {
                        Some(n) => Ev::ok(Value::Int(n)),
                        None => Ev::with(Value::Int(i), Some(ErrorKind::Math)),
                    },
                    other => Ev::ok(other),
                }
            }
            Expr::Logic(op, l, r) => self.logic(*op, l, r),
            Expr::Cmp(op, l, r) => self.compare(*op, l, r),
            Expr::Arith(op, l, r) => self.arith(*op, l, r),
            Expr::Like {
                expr,
                pattern,
                negated,
            } => {
                let v = operand!(self, expr, Type::Bool);
                let Value::Str(s) = self.cast(v, Type::Str) else {
                    return Ev::ok(Value::Bool(false));
                };
                let chars: Vec<char> = s.chars().collect();
                Ev::ok(Value::Bool(like(&chars, pattern) != *negated))
            }
            Expr::In { expr, set, negated } => {
                let v = operand!(self, expr, Type::Bool);
                let target = v.ty();
                let mut found = false;
                for item in set {
                    let item = operand!(self, item, Type::Bool);
                    if self.cast(item, target) == v {
                        found = true;
                        break;
                    }
                }
                Ev::ok(Value::Bool(found != *negated))
            }
            Expr::Call(f, args) => self.call(*f, args),
        }
    }

    fn logic(&mut self, op: LogicOp, l: &Expr, r: &Expr) -> Ev {
        let left = operand!(self, l, Type::Bool);
        let left = self.cast(left, Type::Bool) == Value::Bool(true);
        // AND and OR short-circuit: the right side is not evaluated when the left decides.
        match (op, left) {
            (LogicOp::And, false) => return Ev::ok(Value::Bool(false)),
            (LogicOp::Or, true) => return Ev::ok(Value::Bool(true)),
            _ => {}
        }
        let right = operand!(self, r, Type::Bool);
        let right = self.cast(right, Type::Bool) == Value::Bool(true);
        Ev::ok(Value::Bool(match op {
            LogicOp::And => left && right,
            LogicOp::Or => left || right,
            LogicOp::Xor => left != right,
        }))
    }

    fn compare(&mut self, op: CmpOp, l: &Expr, r: &Expr) -> Ev {
        let left = operand!(self, l, Type::Bool);
        let right = operand!(self, r, Type::Bool);
        let result = match op {
            // `=` is defined for every type: the right operand's type decides the cast.
            CmpOp::Eq | CmpOp::NotEq => {
                let left = self.cast(left, right.ty());
                (left == right) == (op == CmpOp::Eq)
            }
            _ => {
                let (Value::Int(a), Value::Int(b)) =
                    (self.cast(left, Type::Int), self.cast(right, Type::Int))
                else {
                    return Ev::ok(Value::Bool(false));
                };
                match op {
                    CmpOp::Lt => a < b,
                    CmpOp::Le => a <= b,
                    CmpOp::Gt => a > b,
                    _ => a >= b,
                }
            }
        };
        Ev::ok(Value::Bool(result))
    }

    fn arith(&mut self, op: ArithOp, l: &Expr, r: &Expr) -> Ev {
        let left = operand!(self, l, Type::Int);
        let right = operand!(self, r, Type::Int);
        let (Value::Int(a), Value::Int(b)) =
            (self.cast(left, Type::Int), self.cast(right, Type::Int))
        else {
            return Ev::ok(Value::Int(0));
        };
        let r = match op {
            ArithOp::Add => a.checked_add(b),
            ArithOp::Sub => a.checked_sub(b),
            ArithOp::Mul => a.checked_mul(b),
            // Truncated division: the quotient rounds toward zero, the remainder has the sign
            // of the dividend (Rust's `/` and `%`).
            ArithOp::Div => a.checked_div(b),
            ArithOp::Rem => a.checked_rem(b),
        };
        match r {
            Some(v) => Ev::ok(Value::Int(v)),
            None => Ev::with(Value::Int(0), Some(ErrorKind::Math)),
        }
    }

    fn string_arg(&mut self, v: Value) -> String {
        match self.cast(v, Type::Str) {
            Value::Str(s) => s,
            _ => String::new(),
        }
    }

    fn int_arg(&mut self, v: Value) -> i32 {
        match self.cast(v, Type::Int) {
            Value::Int(i) => i,
            _ => 0,
        }
    }

    fn call(&mut self, f: Func, args: &[Expr]) -> Ev {
        let ret = match f {
            Func::Length | Func::Abs | Func::Int => Type::Int,
            Func::Bool | Func::IsInt | Func::IsBool => Type::Bool,
            _ => Type::Str,
        };
        let mut values = Vec::with_capacity(args.len());
        for a in args {
            values.push(operand!(self, a, ret));
        }
        let mut values = values.into_iter();
        let mut next = || values.next().unwrap_or(Value::Str(String::new()));
        let fn_error = Some(ErrorKind::FunctionEvaluation);
        match f {
            Func::Length => {
                let s = self.string_arg(next());
                Ev::ok(Value::Int(
                    i32::try_from(s.chars().count()).unwrap_or(i32::MAX),
                ))
            }
            Func::Concat => {
                let mut out = String::new();
                for _ in 0..args.len() {
                    out.push_str(&self.string_arg(next()));
                }
                Ev::ok(Value::Str(out))
            }
            Func::ConcatWs => {
                let sep = self.string_arg(next());
                let parts: Vec<String> = (1..args.len()).map(|_| self.string_arg(next())).collect();
                Ev::ok(Value::Str(parts.join(&sep)))
            }
            Func::Lower => Ev::ok(Value::Str(self.string_arg(next()).to_lowercase())),
            Func::Upper => Ev::ok(Value::Str(self.string_arg(next()).to_uppercase())),
            Func::Trim => Ev::ok(Value::Str(self.string_arg(next()).trim().to_string())),
            Func::Left | Func::Right => {
                let s = self.string_arg(next());
                let n = self.int_arg(next());
                if n < 0 {
                    return Ev::with(Value::Str(s), fn_error);
                }
                let chars: Vec<char> = s.chars().collect();
                let n = (n as usize).min(chars.len());
                let part = if f == Func::Left {
                    &chars[..n]
                } else {
                    &chars[chars.len() - n..]
                };
                Ev::ok(Value::Str(part.iter().collect()))
            }
            Func::Substring => {
                let s = self.string_arg(next());
                let pos = self.int_arg(next());
                let len = if args.len() == 3 {
                    Some(self.int_arg(next()))
                } else {
                    None
                };
                match substring(&s, pos, len) {
                    Some(sub) => Ev::ok(Value::Str(sub)),
                    None => Ev::with(Value::Str(String::new()), fn_error),
                }
            }
            Func::Abs => {
                let i = self.int_arg(next());
                match i.checked_abs() {
                    Some(a) => Ev::ok(Value::Int(a)),
                    None => Ev::with(Value::Int(i32::MAX), Some(ErrorKind::Math)),
                }
            }
            Func::Int => match cast(next(), Type::Int) {
                Ok(v) => Ev::ok(v),
                Err(zero) => Ev::with(zero, Some(ErrorKind::Cast)),
            },
            Func::Bool => match next() {
                Value::Int(i) => Ev::ok(Value::Bool(i != 0)),
                v => match cast(v, Type::Bool) {
                    Ok(v) => Ev::ok(v),
                    Err(zero) => Ev::with(zero, Some(ErrorKind::Cast)),
                },
            },
            Func::String => Ev::ok(Value::Str(self.string_arg(next()))),
            Func::IsInt => Ev::ok(Value::Bool(cast(next(), Type::Int).is_ok())),
            Func::IsBool => Ev::ok(Value::Bool(cast(next(), Type::Bool).is_ok())),
        }
    }
}

/// SUBSTRING: 1-based `pos` (negative counts from the end, 0 gives ""), optional `len`;
/// `None` for an out-of-range `pos` or a negative `len`.
fn substring(s: &str, pos: i32, len: Option<i32>) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len() as i64;
    let pos = i64::from(pos);
    if pos > n || pos < -n || len.is_some_and(|l| l < 0) {
        return None;
    }
    if pos == 0 {
        return Some(String::new());
    }
    let start = if pos > 0 { pos - 1 } else { n + pos } as usize;
    let end = match len {
        Some(l) => (start + l as usize).min(chars.len()),
        None => chars.len(),
    };
    Some(chars[start..end].iter().collect())
}

/// Whether `s` matches a LIKE pattern (iterative, with backtracking to the last `%`).
fn like(s: &[char], p: &[LikeTok]) -> bool {
    let (mut si, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(LikeTok::Any) => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(LikeTok::One) => {
                si += 1;
                pi += 1;
            }
            Some(LikeTok::Char(c)) if *c == s[si] => {
                si += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|t| *t == LikeTok::Any)
}
