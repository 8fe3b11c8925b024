//! Authorize, capture and refund on a 3-node JetStream cluster with R3 streams: provisioning
//! returns only once every replicated stream has a leader, so the first publish lands.

mod common;

use common::money;
use mock_worker::WorkerConfig;
use nats_bridge::{catalogue::ops, OperationRequest, ResponseStatus};
use nats_testkit::EnvConfig;
use serde_json::json;

#[tokio::test]
async fn authorize_capture_refund_on_a_three_node_cluster() {
    let env = common::start_on(EnvConfig::cluster(), 2, WorkerConfig::default()).await;
    assert_eq!(env.nats().node_count(), 3);
    let js = env.bridge().jetstream();
    for name in ["HYPERSWITCH_PAYMENTS", "HYPERSWITCH_REFUNDS", "HYPERSWITCH_DLQ"] {
        let mut stream = js.get_stream(name).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{name}");
        let cluster = info.cluster.clone().expect("cluster info");
        assert!(cluster.leader.is_some(), "{name} has a leader");
        assert_eq!(cluster.replicas.len(), 2, "{name}: two followers");
    }
    let bridge = env.bridge();
    let auth = OperationRequest::new(ops::authorize(), "m_cluster", "pay_c", "pay_c_1").router_data(money(1000));
    let cap =
        OperationRequest::new(ops::capture(), "m_cluster", "pay_c", "cap_1").router_data(json!({ "amount": 1000, "currency": "USD" }));
    let refund =
        OperationRequest::new(ops::refund(), "m_cluster", "pay_c", "ref_1").router_data(json!({ "amount": 400, "currency": "USD" }));
    for r in [&auth, &cap, &refund] {
        let reply = bridge.call(r).await.unwrap();
        assert_eq!(reply.status, ResponseStatus::Success, "{}: {:?}", r.operation().name, reply.error);
    }
    let account = env.processor().account("m_cluster", "pay_c").expect("account");
    assert_eq!((account.authorized, account.captured, account.refunded), (1000, 1000, 400));
    assert_eq!(env.processor().ledger().len(), 3);
}
