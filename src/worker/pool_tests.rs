use super::*;

fn cfg() -> PoolConfig {
    PoolConfig {
        workers: 2,
        threads: 4,
        min_workers: 1,
        max_workers: 64,
        autoscale: false,
        graceful_timeout: Duration::from_secs(5),
        heartbeat_timeout: Duration::from_secs(10),
        max_boot_failures: 3,
        scale_up_after: Duration::from_secs(1),
        scale_down_after: Duration::from_secs(30),
    }
}

fn spawned(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| {
            if let Action::Spawn(id) = a {
                Some(*id)
            } else {
                None
            }
        })
        .collect()
}

fn boot(pool: &mut Pool, ids: &[u64], now: Instant) -> Vec<Action> {
    let mut out = Vec::new();
    for &id in ids {
        pool.set_pid(id, 1000 + id as i32);
        out.extend(pool.report(id, Report::Ready { threads: 4 }, now));
    }
    out
}

#[test]
fn starts_the_configured_workers_and_replaces_a_dead_one() {
    let t = Instant::now();
    let mut p = Pool::new(cfg());
    let ids = spawned(&p.tick(t));
    assert_eq!(ids.len(), 2);
    assert!(boot(&mut p, &ids, t).is_empty());
    let s = p.stats();
    assert_eq!((s.workers, s.idle, s.ready), (2, 8, true));
    let again = spawned(&p.exited(ids[0], t));
    assert_eq!(again.len(), 1);
    assert_eq!(p.stats().restarts, 1);
}

#[test]
fn boot_failures_back_off_then_give_up() {
    let t = Instant::now();
    let mut p = Pool::new(cfg());
    let ids = spawned(&p.tick(t));
    p.report(
        ids[0],
        Report::BootError {
            traceback: "Traceback: boom".into(),
        },
        t,
    );
    assert!(
        spawned(&p.exited(ids[0], t)).is_empty(),
        "retry waits for the backoff"
    );
    assert!(spawned(&p.exited(ids[1], t)).is_empty());
    assert_eq!(
        p.last_boot_error(),
        Some("worker exited before the app was loaded")
    );
    assert!(
        spawned(&p.tick(t + Duration::from_millis(900))).is_empty(),
        "second failure waits 1 s"
    );
    let retry = spawned(&p.tick(t + Duration::from_millis(1100)));
    assert_eq!(retry.len(), 1, "one at a time after failures");
    p.report(
        retry[0],
        Report::BootError {
            traceback: "Traceback: again".into(),
        },
        t,
    );
    assert_eq!(p.exited(retry[0], t), vec![Action::GiveUp]);
    assert_eq!(p.last_boot_error(), Some("Traceback: again"));
    assert_eq!(p.stats().boot_error.as_deref(), Some("Traceback: again"));
}

#[test]
fn backoff_doubles_and_caps() {
    assert_eq!(boot_backoff(1), Duration::from_millis(500));
    assert_eq!(boot_backoff(2), Duration::from_secs(1));
    assert_eq!(boot_backoff(4), Duration::from_secs(4));
    assert_eq!(boot_backoff(30), Duration::from_secs(30));
}

#[test]
fn reload_keeps_old_workers_until_new_ones_serve() {
    let t = Instant::now();
    let mut p = Pool::new(cfg());
    let old = spawned(&p.tick(t));
    boot(&mut p, &old, t);
    let new = spawned(&p.reload(t));
    assert_eq!(new.len(), 2);
    assert_eq!(p.stats().workers, 2, "old ones still serve");
    let a = boot(&mut p, &new[..1], t);
    assert_eq!(
        a,
        vec![Action::Term(old[0])],
        "one old retires per new ready"
    );
    let a = boot(&mut p, &new[1..], t);
    assert_eq!(a, vec![Action::Term(old[1])]);
    assert_eq!(p.stats().workers, 2);
    assert_eq!(p.stats().retiring, 2);
}

#[test]
fn retire_report_starts_replacement_and_stuck_drain_is_killed() {
    let t = Instant::now();
    let mut p = Pool::new(cfg());
    let ids = spawned(&p.tick(t));
    boot(&mut p, &ids, t);
    let a = p.report(
        ids[0],
        Report::Retire {
            reason: "timeout".into(),
        },
        t,
    );
    assert!(a.contains(&Action::Term(ids[0])));
    assert_eq!(spawned(&a).len(), 1);
    let late = t + Duration::from_secs(8);
    let a = p.tick(late);
    assert!(a.contains(&Action::Kill(ids[0])), "{a:?}");
}

#[test]
fn silent_worker_is_killed() {
    let t = Instant::now();
    let mut p = Pool::new(cfg());
    let ids = spawned(&p.tick(t));
    boot(&mut p, &ids, t);
    p.report(
        ids[1],
        Report::Beat {
            busy: 0,
            requests: 3,
        },
        t + Duration::from_secs(9),
    );
    let a = p.tick(t + Duration::from_secs(11));
    assert!(
        a.contains(&Action::Kill(ids[0])) && !a.contains(&Action::Kill(ids[1])),
        "{a:?}"
    );
    assert_eq!(
        p.stats().restarts,
        1,
        "a killed silent worker counts as a restart"
    );
    p.exited(ids[0], t + Duration::from_secs(12));
    assert_eq!(p.stats().restarts, 1, "and only once");
}

#[test]
fn ttin_ttou_and_stop() {
    let t = Instant::now();
    let mut p = Pool::new(cfg());
    let ids = spawned(&p.tick(t));
    boot(&mut p, &ids, t);
    let more = spawned(&p.resize(1, t));
    assert_eq!(more.len(), 1);
    boot(&mut p, &more, t);
    assert_eq!(p.stats().workers, 3);
    let a = p.resize(-1, t);
    assert_eq!(a.iter().filter(|a| matches!(a, Action::Term(_))).count(), 1);
    let a = p.stop(t);
    assert_eq!(a.len(), 2, "the two still active drain");
    assert!(
        spawned(&p.exited(ids[0], t)).is_empty(),
        "no respawn while stopping"
    );
}

#[test]
fn autoscale_adds_under_saturation_and_retires_when_spare() {
    let t = Instant::now();
    let mut p = Pool::new(PoolConfig {
        workers: 1,
        min_workers: 1,
        max_workers: 3,
        autoscale: true,
        ..cfg()
    });
    let ids = spawned(&p.tick(t));
    boot(&mut p, &ids, t);
    assert_eq!(p.stats().max_workers, 3);
    p.report(
        ids[0],
        Report::Beat {
            busy: 4,
            requests: 10,
        },
        t,
    );
    assert!(spawned(&p.tick(t + Duration::from_millis(500))).is_empty());
    let up = spawned(&p.tick(t + Duration::from_millis(1600)));
    assert_eq!(up.len(), 1, "saturated for over a second");
    let t2 = t + Duration::from_secs(2);
    boot(&mut p, &up, t2);
    let beat = |p: &mut Pool, at: Instant| {
        p.report(
            ids[0],
            Report::Beat {
                busy: 0,
                requests: 10,
            },
            at,
        );
        p.report(
            up[0],
            Report::Beat {
                busy: 1,
                requests: 1,
            },
            at,
        );
    };
    beat(&mut p, t2);
    assert!(p.tick(t2).is_empty());
    for secs in [8, 16, 24] {
        let at = t2 + Duration::from_secs(secs);
        beat(&mut p, at);
        assert!(p.tick(at).is_empty(), "not idle long enough at {secs} s");
    }
    let at = t2 + Duration::from_secs(31);
    beat(&mut p, at);
    let a = p.tick(at);
    assert_eq!(
        a.iter().filter(|a| matches!(a, Action::Term(_))).count(),
        1,
        "{a:?}"
    );
    assert_eq!(p.stats().target_workers, 1);
}
