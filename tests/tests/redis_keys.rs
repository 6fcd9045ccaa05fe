//! Caller-chosen ids in Redis keys, on the real Redis of the test command:
//! ids (and pairs of ids) that would name the same key when joined naively
//! with `:` get keys of their own (`connectors::redis_key::part`).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use connectors::notifier::Store;
use connectors::notifier::policy::DeliveryKind;
use connectors::notifier::store::InAppNotification;
use connectors::redis_key::part;
use inkstream_tests::{redis_url, unique};
use redis::AsyncCommands;

fn note(user: &str, id: &str) -> InAppNotification {
    InAppNotification {
        id: id.into(),
        recipient_id: user.into(),
        priority: schemas::payload::Priority::High,
        title: format!("for {user}"),
        body: String::new(),
        rule: None,
        suppressed_similar: 0,
        kind: DeliveryKind::Immediate,
        created_ms: 1,
        read: false,
    }
}

#[tokio::test]
async fn user_a_colon_items_has_an_inbox_of_its_own_and_not_user_as_item_hash() {
    // Joined naively, user "a:items"'s inbox (`…:inapp:a:items`, a sorted
    // set) is user "a"'s item hash (`…:inapp:a` + `:items`): the second
    // write failed with WRONGTYPE, or one user read the other's items.
    let prefix = unique("keys");
    let store = Store::redis(&redis_url(), &prefix, &Default::default()).unwrap();
    store.in_app_add(&note("a", "n-a"), 10).await.unwrap();
    store
        .in_app_add(&note("a:items", "n-ai"), 10)
        .await
        .unwrap();
    store
        .in_app_add(&note("a%3Aitems", "n-esc"), 10)
        .await
        .unwrap();
    for (user, id) in [("a", "n-a"), ("a:items", "n-ai"), ("a%3Aitems", "n-esc")] {
        let (list, total) = store.in_app_list(user, false, 0, 10).await.unwrap();
        assert_eq!(total, 1, "{user} sees only its own notification: {list:?}");
        assert_eq!(list[0].id, id);
        assert_eq!(list[0].recipient_id, user);
    }
    // Marking one user's notification read leaves the other's unread.
    assert!(store.in_app_mark_read("a:items", "n-ai").await.unwrap());
    assert!(!store.in_app_mark_read("a", "n-ai").await.unwrap());
    let (a, _) = store.in_app_list("a", true, 0, 10).await.unwrap();
    assert_eq!(a.len(), 1, "user a's notification is still unread");
}

#[tokio::test]
async fn hostile_id_pairs_that_collide_when_joined_naively_get_distinct_keys() {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = unique("pairs");
    let pairs = [
        (("a:b", "c"), ("a", "b:c")),
        (("a", "b:c:d"), ("a:b:c", "d")),
        (("x:}", "y"), ("x", "}:y")),
        (("p:q|", "r"), ("p", "q|:r")),
    ];
    for ((u1, d1), (u2, d2)) in pairs {
        let naive = |u: &str, d: &str| format!("{prefix}:naive:{u}:{d}");
        assert_eq!(naive(u1, d1), naive(u2, d2), "the pair collides naively");
        let key = |u: &str, d: &str| format!("{prefix}:k:{}:{}", part(u), part(d));
        let (k1, k2) = (key(u1, d1), key(u2, d2));
        assert_ne!(k1, k2);
        let () = c.set(&k1, format!("{u1}/{d1}")).await.unwrap();
        let () = c.set(&k2, format!("{u2}/{d2}")).await.unwrap();
        let v1: String = c.get(&k1).await.unwrap();
        let v2: String = c.get(&k2).await.unwrap();
        assert_eq!(
            (v1, v2),
            (format!("{u1}/{d1}"), format!("{u2}/{d2}")),
            "both values survive in Redis"
        );
    }
    let keys: Vec<String> = c.keys(format!("{prefix}:k:*")).await.unwrap();
    assert_eq!(keys.len(), 8, "{keys:?}");
}
