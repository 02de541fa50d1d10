//! The states of a vCPU and the legal moves between them.

use core::fmt;

/// The lifecycle state of a vCPU.
///
/// The legal moves, and the [`AxVCpu`](crate::AxVCpu) method that makes each:
///
/// | from      | to        | method                                       |
/// |-----------|-----------|----------------------------------------------|
/// | (none)    | `Created` | `new`                                        |
/// | `Created` | `Free`    | `setup`                                      |
/// | `Free`    | `Ready`   | `bind`                                       |
/// | `Ready`   | `Free`    | `unbind`                                     |
/// | `Ready`   | `Running` | `run` (on entry)                             |
/// | `Running` | `Ready`   | `run` (on exit)                              |
/// | `Free`    | `Blocked` | `block`                                      |
/// | `Ready`   | `Blocked` | `block` (stays bound)                        |
/// | `Blocked` | `Free`    | `unblock`, if it was blocked while unbound   |
/// | `Blocked` | `Ready`   | `unblock`, if it was blocked while bound     |
/// | any       | `Invalid` | an architecture operation of a move failed   |
///
/// `Invalid` is terminal. Anything else is refused with
/// [`Error::InvalidState`](crate::Error::InvalidState).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VCpuState {
    /// A failed architecture operation left the vCPU unusable. Terminal.
    Invalid,
    /// Created by the architecture, not set up yet.
    Created,
    /// Set up, not bound to a physical CPU.
    Free,
    /// Bound to the current physical CPU, ready to run.
    Ready,
    /// Executing guest code (only seen inside [`AxVCpu::run`](crate::AxVCpu::run)).
    Running,
    /// Waiting (for example after a guest `HLT`); remembers whether it is bound.
    Blocked,
}

impl VCpuState {
    /// The name of the state (`"Free"`, `"Ready"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Invalid => "Invalid",
            Self::Created => "Created",
            Self::Free => "Free",
            Self::Ready => "Ready",
            Self::Running => "Running",
            Self::Blocked => "Blocked",
        }
    }

    /// Whether `self -> to` is an edge of the state machine.
    ///
    /// `bound` tells whether the vCPU is bound to a physical CPU; it only matters
    /// when leaving `Blocked`, which returns to `Ready` if bound and to `Free` if not.
    pub const fn can_transition_to(self, to: Self, bound: bool) -> bool {
        use VCpuState::*;
        matches!(
            (self, to),
            (Created, Free)
                | (Free, Ready)
                | (Ready, Free)
                | (Ready, Running)
                | (Running, Ready)
                | (Free, Blocked)
                | (Ready, Blocked)
        ) || matches!(
            (self, to, bound),
            (Blocked, Ready, true) | (Blocked, Free, false)
        )
    }
}

impl fmt::Display for VCpuState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::VCpuState::{self, *};

    const ALL: [VCpuState; 6] = [Invalid, Created, Free, Ready, Running, Blocked];

    #[test]
    fn exactly_the_documented_edges_are_legal() {
        let mut legal = std::vec::Vec::new();
        for bound in [false, true] {
            for from in ALL {
                for to in ALL {
                    if from.can_transition_to(to, bound) {
                        legal.push((from, to, bound));
                    }
                }
            }
        }
        let expected = [
            (Created, Free, false),
            (Free, Ready, false),
            (Free, Blocked, false),
            (Ready, Free, false),
            (Ready, Running, false),
            (Ready, Blocked, false),
            (Running, Ready, false),
            (Blocked, Free, false),
            (Created, Free, true),
            (Free, Ready, true),
            (Free, Blocked, true),
            (Ready, Free, true),
            (Ready, Running, true),
            (Ready, Blocked, true),
            (Running, Ready, true),
            (Blocked, Ready, true),
        ];
        assert_eq!(legal, expected);
    }

    #[test]
    fn invalid_is_terminal() {
        for to in ALL {
            assert!(!Invalid.can_transition_to(to, false));
            assert!(!Invalid.can_transition_to(to, true));
        }
    }

    #[test]
    fn display_is_the_name() {
        assert_eq!(std::format!("{}", Blocked), "Blocked");
        assert_eq!(Running.name(), "Running");
    }
}
