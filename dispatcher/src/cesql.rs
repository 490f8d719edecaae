//! CloudEvents SQL (CESQL v1): parse and check an expression once (when a trigger is applied),
//! evaluate it against each event.
//!
//! - `lexer.rs`: text → tokens, with positions for error messages.
//! - `parser.rs`: tokens → `Expr`; functions resolved by name and arity here, so an unknown
//!   function or a non-literal `LIKE` pattern is rejected before any event is seen.
//! - `eval.rs`: the evaluator and the implicit casts of the spec.
//!
//! Precedence, loosest first: `OR`, `XOR`, `AND`, `NOT`, comparisons (`= != <> < <= > >=`,
//! `LIKE`, `IN`), `+ -`, `* / %`, unary `-`. Binary operators are left-associative. (The spec's
//! prose does not fix a precedence; this is SQL's, and every TCK case agrees with it.)
//!
//! Errors follow the spec's "complete evaluation": an expression always yields a value plus
//! perhaps an error. A failed implicit cast uses the target type's zero value and goes on; an
//! error from an operand makes the operator yield its zero value. A filter matches only on
//! `true` without error.

mod eval;
mod lexer;
mod parser;

pub use eval::Value;

/// The kinds of error the spec names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Parse,
    Math,
    Cast,
    MissingAttribute,
    MissingFunction,
    FunctionEvaluation,
}

/// An expression that does not compile, with where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("CESQL {}: {message} at column {column}", if *kind == ErrorKind::MissingFunction { "error" } else { "syntax error" })]
pub struct CompileError {
    pub kind: ErrorKind,
    pub message: String,
    /// 1-based character position in the expression.
    pub column: usize,
}

/// A compiled CESQL expression.
#[derive(Clone, Debug)]
pub struct Expression {
    root: parser::Expr,
}

/// What evaluating an expression gives: always a value, and the first error if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub value: Value,
    pub error: Option<ErrorKind>,
}

impl Expression {
    /// Parses and checks `text`.
    pub fn compile(text: &str) -> Result<Self, CompileError> {
        let tokens = lexer::lex(text)?;
        let root = parser::parse(&tokens, text)?;
        Ok(Self { root })
    }

    /// Evaluates against an event.
    pub fn evaluate(&self, event: &broker::Event) -> Outcome {
        eval::evaluate(&self.root, event)
    }

    /// Whether `event` passes this expression as a filter: `true`, and no error.
    pub fn matches(&self, event: &broker::Event) -> bool {
        let o = self.evaluate(event);
        o.error.is_none() && o.value == Value::Bool(true)
    }
}
