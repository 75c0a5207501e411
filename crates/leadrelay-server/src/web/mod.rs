//! The web UI, served by the same binary at `/`: sign-in, the register, a lead's timeline,
//! the not-integrated collection, the configuration and the overview. Pages are rendered on
//! the server with maud (compile-checked, escaping every value); one small script adds live
//! rows, the JSON toggle and job progress, and every page works without it.

mod config_page;
mod lead;
mod overview;
mod register;
mod session;
mod view;

use std::sync::Arc;

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

pub(crate) use overview::{warm as warm_overview, OverviewCache};

const STYLE: &str = include_str!("assets/app.css");
const SCRIPT: &str = include_str!("assets/app.js");

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(register::register))
        .route("/register/rows", get(register::register_rows))
        .route("/register/resend", post(register::resend_matching))
        .route("/register/{transfer_id}/resend", post(register::resend_one))
        .route("/jobs/{job_id}", get(register::job))
        .route("/not-integrated", get(register::not_integrated))
        .route("/leads/{lead_id}", get(lead::lead_page))
        .route("/leads/{lead_id}/transfers/{transfer_id}", get(register::transfer))
        .route("/config", get(config_page::show).post(config_page::apply))
        .route("/overview", get(overview::overview))
        .route("/sign-in", get(session::show_sign_in).post(session::sign_in))
        .route("/sign-out", post(session::sign_out))
        .route("/assets/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "public, max-age=3600")], body)
}
