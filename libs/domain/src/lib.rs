//! rollcall-domain: the User, Group and Application aggregates as pure functions. `decide` turns a command
//! and the current state into events (or a domain error); `evolve` folds an event into the
//! state. No IO, no clock, no randomness, no logging: times and ids arrive from the edge.
//!
//! Events are past-tense facts with a stable wire name (`user.deactivated`) that an auditor can
//! read. Released events are never edited; a changed shape is a new variant, and the old one
//! stays readable (see [`event::EventKind`]).
#![warn(missing_docs)]

pub mod application;
pub mod attributes;
pub mod event;
pub mod group;
pub mod identity;
pub mod policy;
pub mod ssf;
pub mod user;

pub use application::{
    Application, ApplicationCommand, ApplicationError, ApplicationEvent, ApplicationSpec,
};
pub use attributes::{AttributeChange, Attributes};
pub use event::EventKind;
pub use group::{Group, GroupCommand, GroupError, GroupEvent, Member};
pub use identity::IdentityEvent;
pub use ssf::{StreamCommand, StreamEvent};
pub use user::{User, UserCommand, UserError, UserEvent};
