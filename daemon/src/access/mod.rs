//! Access control: who a card belongs to, what they are cleared for, and the audit log of every decision.
//!
//! - [`card`]: the card identity (FASC-N, card UUID) read from a certificate's subjectAltName.
//! - [`record`]: clearance assignments signed with a security officer's card (pure, verifiable forever).
//! - [`audit`]: the hash-chained audit log (pure).
//! - [`store`]: the redb store that accepts an assignment only from a current officer, and the signed
//!   bootstrap step that names the first officer.
//!
//! Nothing a client sends can raise its clearance: the portal reads the clearance from this store by the
//! card identity of a validated certificate.

pub mod audit;
pub mod card;
pub mod record;
pub mod store;
pub mod testpki;

pub use audit::{AuditEvent, AuditRecord};
pub use card::CardIdentity;
pub use record::{Action, Assignment, AssignmentSigner, SignedAssignment, Subject};
pub use store::{AccessError, AccessStore, PersonRecord};
