//! Checks of the harness itself: the testapp image builds (idempotently) and `wait_for` reports timeouts.

use std::time::Duration;

use wharf_testkit::{Check, not_yet, testapp_image, wait_for};

#[tokio::test]
async fn testapp_image_builds_and_is_tagged_latest() -> anyhow::Result<()> {
    let (a, b) = tokio::join!(testapp_image(), testapp_image());
    let (a, b) = (a?, b?);
    assert_eq!(a, b);
    assert!(a.starts_with("wharf-testapp:"), "{a}");
    let docker = wharf_testkit::docker().await?;
    let tagged = docker.inspect_image(&a).await?;
    let latest = docker.inspect_image("wharf-testapp:latest").await?;
    assert_eq!(tagged.id, latest.id);
    Ok(())
}

#[tokio::test]
async fn wait_for_reports_the_last_observation() {
    let mut n = 0;
    let err = wait_for("the answer", Duration::from_millis(300), || {
        n += 1;
        let seen = n;
        async move {
            if seen > 1000 {
                Check::Done(42)
            } else {
                not_yet(format!("seen {seen}"))
            }
        }
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("timed out after 0.3s waiting for the answer"),
        "{err}"
    );
    assert!(err.contains("seen"), "{err}");
    let v = wait_for("some", Duration::from_secs(1), || async { Some(7) })
        .await
        .unwrap();
    assert_eq!(v, 7);
    let v: u8 = wait_for("ok", Duration::from_secs(1), || async {
        anyhow::Ok(Some(1u8))
    })
    .await
    .unwrap();
    assert_eq!(v, 1);
}
