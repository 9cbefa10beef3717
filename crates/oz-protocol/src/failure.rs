//! The bounded set of `failure_reason` strings the official control plane mirrors.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `task_failed.failure_reason`. The strings are exactly the official ones; an
/// unknown string from a newer peer decodes to [`FailureReason::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    Unknown,
    TaskTimeout,
    TaskCancelled,
    GracefulShutdown,
    ImagePull,
    SidecarPrep,
    ContainerCreate,
    ContainerStart,
    ContainerWait,
    ContainerExit,
    ContainerOom,
    WorkspaceSetup,
    SetupCommand,
    AgentInvocation,
    TeardownCommand,
    DispatchCommand,
    DispatchTimeout,
    CancelCommand,
    JobCreate,
    JobWatch,
    JobFailed,
    Evicted,
    PodWatch,
    Unschedulable,
    VolumeMount,
    InitContainer,
    InvalidImage,
    ActiveDeadline,
    Cleanup,
}

impl FailureReason {
    /// Every reason, in the official order.
    pub const ALL: [FailureReason; 29] = [
        FailureReason::Unknown,
        FailureReason::TaskTimeout,
        FailureReason::TaskCancelled,
        FailureReason::GracefulShutdown,
        FailureReason::ImagePull,
        FailureReason::SidecarPrep,
        FailureReason::ContainerCreate,
        FailureReason::ContainerStart,
        FailureReason::ContainerWait,
        FailureReason::ContainerExit,
        FailureReason::ContainerOom,
        FailureReason::WorkspaceSetup,
        FailureReason::SetupCommand,
        FailureReason::AgentInvocation,
        FailureReason::TeardownCommand,
        FailureReason::DispatchCommand,
        FailureReason::DispatchTimeout,
        FailureReason::CancelCommand,
        FailureReason::JobCreate,
        FailureReason::JobWatch,
        FailureReason::JobFailed,
        FailureReason::Evicted,
        FailureReason::PodWatch,
        FailureReason::Unschedulable,
        FailureReason::VolumeMount,
        FailureReason::InitContainer,
        FailureReason::InvalidImage,
        FailureReason::ActiveDeadline,
        FailureReason::Cleanup,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Unknown => "unknown",
            FailureReason::TaskTimeout => "task_timeout",
            FailureReason::TaskCancelled => "task_cancelled",
            FailureReason::GracefulShutdown => "graceful_shutdown",
            FailureReason::ImagePull => "image_pull",
            FailureReason::SidecarPrep => "sidecar_prep",
            FailureReason::ContainerCreate => "container_create",
            FailureReason::ContainerStart => "container_start",
            FailureReason::ContainerWait => "container_wait",
            FailureReason::ContainerExit => "container_exit",
            FailureReason::ContainerOom => "container_oom",
            FailureReason::WorkspaceSetup => "workspace_setup",
            FailureReason::SetupCommand => "setup_command",
            FailureReason::AgentInvocation => "agent_invocation",
            FailureReason::TeardownCommand => "teardown_command",
            FailureReason::DispatchCommand => "dispatch_command",
            FailureReason::DispatchTimeout => "dispatch_timeout",
            FailureReason::CancelCommand => "cancel_command",
            FailureReason::JobCreate => "job_create",
            FailureReason::JobWatch => "job_watch",
            FailureReason::JobFailed => "job_failed",
            FailureReason::Evicted => "evicted",
            FailureReason::PodWatch => "pod_watch",
            FailureReason::Unschedulable => "unschedulable",
            FailureReason::VolumeMount => "volume_mount",
            FailureReason::InitContainer => "init_container",
            FailureReason::InvalidImage => "invalid_image",
            FailureReason::ActiveDeadline => "active_deadline",
            FailureReason::Cleanup => "cleanup",
        }
    }
}

impl Serialize for FailureReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FailureReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(FailureReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .unwrap_or(FailureReason::Unknown))
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_match_serde() {
        for r in FailureReason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            let back: FailureReason = serde_json::from_str(&json).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn unknown_string_decodes_to_unknown() {
        let r: FailureReason = serde_json::from_str("\"brand_new_reason\"").unwrap();
        assert_eq!(r, FailureReason::Unknown);
    }
}
