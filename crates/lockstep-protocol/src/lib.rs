//! Wire types and rules shared by `lockstep-cloud` and its clients.
//!
//! Everything that crosses the network between a Lockstep client and the cloud is defined here
//! once: the Supabase-compatible auth shapes ([`auth`]), device rows ([`devices`]), audit entries
//! ([`audit`]), settings sync ([`sync`], stamped by [`hlc`]) and the rules both sides must agree
//! on (password strength, device descriptions, the settings schema in [`settings`] and the
//! last-writer-wins merge in [`sync`]).
//!
//! This crate knows nothing of HTTP frameworks, databases or Tauri: it is plain data and pure
//! functions, so the server and every client can depend on it cheaply.
#![forbid(unsafe_code)]

/// Defines an enum of wire words (error codes, stream event names), each with its text once:
/// `ALL`, `as_str`, `parse`, `Display`, and serde as the text.
macro_rules! codes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// Every code, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The code as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }

            /// The code a wire text names, if it is one of these.
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $( $text => Some($name::$variant), )*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(deserializer)?;
                $name::parse(&text).ok_or_else(|| {
                    serde::de::Error::custom(format!("unknown {} `{text}`", stringify!($name)))
                })
            }
        }
    };
}

pub mod audit;
pub mod auth;
pub mod devices;
pub mod errors;
pub mod feed;
pub mod hlc;
pub mod password;
pub mod settings;
pub mod sync;
pub mod timestamp;
