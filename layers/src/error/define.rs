//! The macro that turns the table in [`super::table`] into error types.
//!
//! One entry per failure, read top to bottom like a row of the DESIGN
//! table:
//!
//! ```text
//! /// What happened (the struct's docs).
//! Name { field: Type, ... }
//!     reply 413, "openai_error_type", "code";
//!     retry_after |this| Option<u64>;      // optional: seconds for Retry-After
//!     allow |this| Option<&'static str>;   // optional: methods for Allow (405)
//!     message |this, f| write!(f, "what happened; what to fix", ...);
//!     impl { constructors and accessors, written out }
//! ```
//!
//! From it come the struct (private fields, `Debug`), its `Display` (the
//! message), `Error`, the [`ErrorReply`](super::ErrorReply) it answers with,
//! a line of docs naming the status, type and code, and `reply_to_known`,
//! which [`ErrorReply::from_error`](super::ErrorReply::from_error) asks for
//! every error of a source chain: an error added to the table cannot be
//! forgotten there. Constructors stay written out because each bounds or
//! converts its input its own way (client strings are echoed bounded).

/// Generates the failures; see the module docs for the entry syntax.
macro_rules! failures {
    ($(
        $(#[$attr:meta])*
        $name:ident { $($(#[$field_attr:meta])* $field:ident : $field_ty:ty),* $(,)? }
            reply $status:literal, $kind:literal, $code:literal;
            $(retry_after |$retry_this:ident| $retry_after:expr;)?
            $(allow |$allow_this:ident| $allow:expr;)?
            message |$message_this:ident, $f:ident| $message:expr;
            impl { $($methods:tt)* }
    )*) => {
        $(
            $(#[$attr])*
            #[doc = ""]
            #[doc = concat!("Answers ", $status, ", type `", $kind, "`, code `", $code, "`.")]
            #[derive(Debug)]
            pub struct $name {
                $($(#[$field_attr])* $field: $field_ty,)*
            }

            impl $name {
                $($methods)*

                fn reply(&self) -> ErrorReply {
                    // A status that is not one fails the build, not a request.
                    const STATUS: StatusCode = match StatusCode::from_u16($status) {
                        Ok(status) => status,
                        Err(_) => panic!("not an HTTP status"),
                    };
                    #[allow(unused_mut)]
                    let mut reply = ErrorReply::new(STATUS, $kind, $code, self.to_string());
                    $(reply.retry_after = {
                        let $retry_this = self;
                        $retry_after
                    };)?
                    $(reply.allow = {
                        let $allow_this = self;
                        $allow
                    };)?
                    reply
                }
            }

            impl fmt::Display for $name {
                fn fmt(&self, $f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    let $message_this = self;
                    $message
                }
            }

            impl Error for $name {}
        )*

        /// The reply for `err` when it is one of the table's failures
        /// (`err` itself, not its sources).
        pub(super) fn reply_to_known(err: &(dyn Error + 'static)) -> Option<ErrorReply> {
            $(
                if let Some(known) = err.downcast_ref::<$name>() {
                    return Some(known.reply());
                }
            )*
            None
        }

        /// Every row of the table: (name, status, type, code), for tests
        /// that check the table as a whole.
        #[cfg(test)]
        pub(super) const ROWS: &[(&str, u16, &str, &str)] = &[$((stringify!($name), $status, $kind, $code)),*];
    };
}

pub(super) use failures;
