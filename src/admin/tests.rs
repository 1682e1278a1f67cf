use http_body_util::BodyExt;

use super::*;
use crate::Endpoint;
use crate::discover::Registry;
use crate::pool::{Pool, PoolConfig};

async fn body(res: Response<Full<Bytes>>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn pool(registry: &Registry) -> Pool<()> {
    let connect = tower::service_fn(|_e: Endpoint| async { Ok::<_, Infallible>(()) });
    let pool = Pool::spawn(registry.watch("api").unwrap(), connect, PoolConfig::new());
    pool.changed(0).await;
    pool
}

#[tokio::test]
async fn the_routes_answer_the_page_the_report_and_errors() {
    let registry = Registry::new();
    let _a = registry
        .register("api", Endpoint::new("127.0.0.1:9001".parse().unwrap()))
        .unwrap();
    let admin = AdminService::new(pool(&registry).await);

    for path in ["/", "", "/index.html"] {
        let res = admin.respond(&Method::GET, path);
        assert_eq!(res.status(), StatusCode::OK, "{path:?}");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let page = body(res).await;
        assert!(page.starts_with("<!doctype html>") && page.contains("status.json"));
        assert!(
            !page.contains("http://") || page.contains("http://www.w3.org/2000/svg"),
            "no external asset"
        );
    }

    let res = admin.respond(&Method::GET, "/status.json/");
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    let status: Status = serde_json::from_str(&body(res).await).unwrap();
    assert_eq!(status.service, "api");
    assert_eq!(status.endpoints[0].key, "127.0.0.1:9001");

    let res = admin.respond(&Method::GET, "/metrics");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(body(res).await.contains("AdminService::prometheus"));
    let res = admin.respond(&Method::POST, "/status.json");
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let res = admin.respond(&Method::GET, "/nope");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_are_what_the_render_function_gives() {
    let registry = Registry::new();
    let _a = registry
        .register("api", Endpoint::new("127.0.0.1:9001".parse().unwrap()))
        .unwrap();
    let admin =
        AdminService::new(pool(&registry).await).prometheus(|| "# TYPE x counter\nx 1\n".into());
    let mut svc = admin.clone();
    let req = Request::get("/metrics").body(()).unwrap();
    let res = Service::call(&mut svc, req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(body(res).await, "# TYPE x counter\nx 1\n");
}
