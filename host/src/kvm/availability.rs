//! The one rule every KVM test follows when `/dev/kvm` is missing.

#[cfg(any(test, feature = "test-utils"))]
use std::fmt::Display;

/// The device KVM tests need.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// The only KVM API version there has ever been.
#[cfg(any(test, feature = "test-utils"))]
const KVM_API_VERSION: i32 = 12;
/// Set this environment variable to `1` to make KVM tests fail, not skip, without KVM.
pub const REQUIRE_KVM_ENV: &str = "PVIRQ_REQUIRE_KVM";

#[cfg(any(test, feature = "test-utils"))]
/// What a KVM test does, given whether KVM opened and the value of [`REQUIRE_KVM_ENV`].
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Run,
    Skip(String),
    Fail(String),
}

#[cfg(any(test, feature = "test-utils"))]
fn decide<E: Display>(opened: Result<(), E>, require: Option<&str>) -> Decision {
    match opened {
        Ok(()) => Decision::Run,
        Err(err) if require == Some("1") => Decision::Fail(format!(
            "{REQUIRE_KVM_ENV}=1 but {KVM_DEVICE} is not available ({err})"
        )),
        Err(err) => Decision::Skip(format!("SKIPPED: {KVM_DEVICE} not available ({err})")),
    }
}

#[cfg(any(test, feature = "test-utils"))]
/// Test support: whether a test that needs KVM should run.
///
/// Returns `true` if `/dev/kvm` opens and answers `KVM_GET_API_VERSION`. Otherwise prints `SKIPPED: /dev/kvm not available
/// (reason)` and returns `false`, so the test can return early.
///
/// # Panics
///
/// If `/dev/kvm` does not open and `PVIRQ_REQUIRE_KVM=1` is set: the test must fail.
pub fn require_kvm_or_skip() -> bool {
    // Opening is not enough: anything can sit at that path (a bind mount, a stale node).
    let opened = kvm_ioctls::Kvm::new()
        .map_err(|err| err.to_string())
        .and_then(|kvm| match kvm.get_api_version() {
            KVM_API_VERSION => Ok(()),
            -1 => Err(kvm_ioctls::Error::last().to_string()),
            other => Err(format!(
                "KVM API version {other}, expected {KVM_API_VERSION}"
            )),
        });
    let require = std::env::var(REQUIRE_KVM_ENV).ok();
    match decide(opened, require.as_deref()) {
        Decision::Run => true,
        Decision::Skip(line) => {
            println!("{line}");
            false
        }
        // Test support: failing the test that needs KVM is the point.
        #[allow(clippy::panic)]
        Decision::Fail(message) => panic!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_when_kvm_opens_whatever_the_environment() {
        assert_eq!(decide::<&str>(Ok(()), None), Decision::Run);
        assert_eq!(decide::<&str>(Ok(()), Some("1")), Decision::Run);
    }

    #[test]
    fn skips_with_the_reason_unless_kvm_is_required() {
        let line = "SKIPPED: /dev/kvm not available (No such file or directory)".to_string();
        assert_eq!(
            decide(Err("No such file or directory"), None),
            Decision::Skip(line.clone())
        );
        assert_eq!(
            decide(Err("No such file or directory"), Some("0")),
            Decision::Skip(line)
        );
        assert!(matches!(decide(Err("gone"), Some("1")), Decision::Fail(m) if m.contains("gone")));
    }
}
