//! The overview: transfers per day by status, by source and by destination, and how long
//! deliveries took, as charts drawn here in SVG (no script, no chart library).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use leadrelay_domain::event::RegisterStatus;
use leadrelay_domain::time::now_millis;
use leadrelay_store::{OverviewQuery, OverviewRow, LATENCY_BOUNDS_MS};
use maud::{html, Markup};

use super::session::Session;
use super::view::{duration, page_response, shell, status_badge, WebError, WebResult};
use crate::params::Params;
use crate::AppState;

const DAY_MS: i64 = 86_400_000;

/// How long a past day's counts are shown before they are counted again (in the background):
/// late retries and resends still change the status of older transfers.
const PAST_DAYS_FRESH_MS: i64 = 60_000;

/// Past days' groups, counted once and refreshed in the background, so that the overview
/// counts only today's transfers while a person waits. Today is always counted afresh.
#[derive(Default)]
pub(crate) struct OverviewCache {
    days: std::sync::Mutex<BTreeMap<i64, CachedDay>>,
    refreshing: std::sync::atomic::AtomicBool,
}

struct CachedDay {
    rows: Vec<OverviewRow>,
    counted_at: i64,
}

impl OverviewCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, CachedDay>> {
        self.days.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts the days `first..=last` in one query and keeps each day's groups.
    async fn count(&self, state: &AppState, first: i64, last: i64) -> leadrelay_store::StoreResult<()> {
        let counted_at = now_millis();
        let rows = state.store.overview(&OverviewQuery { start: first * DAY_MS, end: (last + 1) * DAY_MS }).await?;
        let mut by_day: BTreeMap<i64, Vec<OverviewRow>> = (first..=last).map(|day| (day, Vec::new())).collect();
        for row in rows {
            by_day.entry(row.day).or_default().push(row);
        }
        let mut days = self.lock();
        for (day, rows) in by_day {
            days.insert(day, CachedDay { rows, counted_at });
        }
        // Nothing older than the longest window is ever shown again.
        let oldest = first.min(counted_at.div_euclid(DAY_MS) - 366);
        days.retain(|day, _| *day >= oldest);
        Ok(())
    }

    /// The groups of the days `first..=today`: past days from the cache (counted now when they
    /// are missing, refreshed in the background when they are old), today counted now.
    pub(crate) async fn rows(
        &self,
        state: &Arc<AppState>,
        first: i64,
        today: i64,
    ) -> leadrelay_store::StoreResult<Vec<OverviewRow>> {
        let now = now_millis();
        let (missing, stale) = {
            let days = self.lock();
            let missing: Vec<i64> = (first..today).filter(|day| !days.contains_key(day)).collect();
            let stale = (first..today)
                .any(|day| days.get(&day).is_some_and(|cached| now - cached.counted_at > PAST_DAYS_FRESH_MS));
            (missing, stale)
        };
        if let (Some(from), Some(to)) = (missing.first(), missing.last()) {
            self.count(state, *from, *to).await?;
        }
        if stale && !self.refreshing.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(error) = state.overview.count(&state, first, today - 1).await {
                    tracing::warn!(%error, "could not count the overview's past days again");
                }
                state.overview.refreshing.store(false, std::sync::atomic::Ordering::Release);
            });
        }
        let mut rows =
            state.store.overview(&OverviewQuery { start: today * DAY_MS, end: (today + 1) * DAY_MS }).await?;
        let days = self.lock();
        for (_, cached) in days.range(first..today) {
            rows.extend(cached.rows.iter().cloned());
        }
        Ok(rows)
    }
}

/// Counts the default window's past days when the server starts, so the first person to open
/// the overview does not wait for them.
pub(crate) async fn warm(state: Arc<AppState>) {
    let today = now_millis().div_euclid(DAY_MS);
    if let Err(error) = state.overview.count(&state, today - DEFAULT_DAYS + 1, today - 1).await {
        tracing::warn!(%error, "could not count the overview's past days");
    }
}

const DEFAULT_DAYS: i64 = 14;

/// Counts per register status, in the order of [`RegisterStatus::ALL`].
type Counts = [u64; 4];

fn status_index(status: RegisterStatus) -> usize {
    RegisterStatus::ALL.iter().position(|known| *known == status).unwrap_or(0)
}

fn day_label(day: i64) -> String {
    leadrelay_domain::time::format_date(day * DAY_MS)
}

/// A stacked bar per day, one colour per status.
fn days_chart(days: &[(i64, Counts)]) -> Markup {
    let (width, height, bottom) = (760.0, 220.0, 30.0);
    let most = days.iter().map(|(_, counts)| counts.iter().sum::<u64>()).max().unwrap_or(0).max(1) as f64;
    let slot = width / days.len().max(1) as f64;
    let bar = (slot * 0.7).max(2.0);
    html! {
        svg.chart viewBox={"0 0 " (width) " " (height)} role="img" aria-label="Transfers per day by status" {
            line.axis x1="0" y1=(height - bottom) x2=(width) y2=(height - bottom) {}
            text.axis-label x="4" y="12" { (most as u64) }
            @for (index, (day, counts)) in days.iter().enumerate() {
                @let x = index as f64 * slot + (slot - bar) / 2.0;
                @let mut y = height - bottom;
                @for (position, status) in RegisterStatus::ALL.iter().enumerate() {
                    @let count = counts[position];
                    @if count > 0 {
                        @let h = count as f64 / most * (height - bottom - 16.0);
                        @let top = { y -= h; y };
                        rect class={"fill-" (status.as_str())} x=(format!("{x:.1}")) y=(format!("{top:.1}"))
                            width=(format!("{bar:.1}")) height=(format!("{h:.1}")) {
                            title { (day_label(*day)) ": " (count) " " (status.as_str()) }
                        }
                    }
                }
                @if days.len() <= 31 && (days.len() <= 14 || index % 2 == 0) {
                    text.axis-label x=(format!("{:.1}", x + bar / 2.0)) y=(height - 10.0) text-anchor="middle" {
                        (day_label(*day).get(5..).unwrap_or(""))
                    }
                }
            }
        }
    }
}

/// A horizontal stacked bar per name (a source or a destination), one colour per status.
fn names_chart(label: &str, names: &BTreeMap<String, Counts>) -> Markup {
    let row = 26.0;
    let (label_width, width) = (180.0, 760.0);
    let height = row * names.len().max(1) as f64 + 4.0;
    let most = names.values().map(|counts| counts.iter().sum::<u64>()).max().unwrap_or(0).max(1) as f64;
    html! {
        svg.chart viewBox={"0 0 " (width) " " (height)} role="img" aria-label=(label) {
            @for (index, (name, counts)) in names.iter().enumerate() {
                @let y = index as f64 * row + 4.0;
                @let total: u64 = counts.iter().sum();
                text.axis-label x="0" y=(format!("{:.1}", y + 15.0)) { (name) }
                @let mut x = label_width;
                @for (position, status) in RegisterStatus::ALL.iter().enumerate() {
                    @let count = counts[position];
                    @if count > 0 {
                        @let w = count as f64 / most * (width - label_width - 70.0);
                        @let left = { let left = x; x += w; left };
                        rect class={"fill-" (status.as_str())} x=(format!("{left:.1}")) y=(format!("{y:.1}"))
                            width=(format!("{w:.1}")) height="18" {
                            title { (name) ": " (count) " " (status.as_str()) }
                        }
                    }
                }
                text.axis-label x=(format!("{:.1}", x + 6.0)) y=(format!("{:.1}", y + 15.0)) { (total) }
            }
        }
    }
}

/// The label of latency bucket `index`: `< 100 ms`, `≥ 30 min`.
fn bucket_label(index: usize) -> String {
    match LATENCY_BOUNDS_MS.get(index) {
        Some(bound) => format!("< {}", duration(*bound)),
        None => format!("≥ {}", duration(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1])),
    }
}

/// The bucket's upper bound, as the estimate of a percentile that falls in it.
fn percentile(buckets: &[u64], share: f64) -> Option<String> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let wanted = (total as f64 * share).ceil() as u64;
    let mut seen = 0;
    for (index, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= wanted.max(1) {
            return Some(bucket_label(index));
        }
    }
    None
}

fn latency_chart(buckets: &[u64]) -> Markup {
    let (width, height, bottom) = (760.0, 200.0, 30.0);
    let most = buckets.iter().copied().max().unwrap_or(0).max(1) as f64;
    let slot = width / buckets.len() as f64;
    html! {
        svg.chart viewBox={"0 0 " (width) " " (height)} role="img" aria-label="Delivery latency" {
            line.axis x1="0" y1=(height - bottom) x2=(width) y2=(height - bottom) {}
            @for (index, count) in buckets.iter().enumerate() {
                @let h = *count as f64 / most * (height - bottom - 16.0);
                @let x = index as f64 * slot + slot * 0.15;
                rect.fill-latency x=(format!("{x:.1}")) y=(format!("{:.1}", height - bottom - h)) width=(format!("{:.1}", slot * 0.7))
                    height=(format!("{h:.1}")) {
                    title { (bucket_label(index)) ": " (count) }
                }
                text.axis-label x=(format!("{:.1}", x + slot * 0.35)) y=(height - 10.0) text-anchor="middle" { (bucket_label(index)) }
            }
        }
    }
}

pub(crate) async fn overview(
    State(state): State<Arc<AppState>>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> WebResult<Response> {
    let params = Params::parse(raw.as_deref(), &["days"])?;
    let days = match params.text("days") {
        None => DEFAULT_DAYS,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|days| (1..=366).contains(days))
            .ok_or_else(|| WebError::bad_request("days: must be a whole number from 1 to 366"))?,
    };
    let today = now_millis().div_euclid(DAY_MS);
    let rows = state.overview.rows(&state, today - days + 1, today).await?;

    let mut per_day: Vec<(i64, Counts)> = (today - days + 1..=today).map(|day| (day, [0; 4])).collect();
    let mut per_source: BTreeMap<String, Counts> = BTreeMap::new();
    let mut per_destination: BTreeMap<String, Counts> = BTreeMap::new();
    let mut totals: Counts = [0; 4];
    let mut latency = vec![0u64; LATENCY_BOUNDS_MS.len() + 1];
    for row in &rows {
        let status = status_index(row.status);
        if let Some((_, counts)) = per_day.iter_mut().find(|(day, _)| *day == row.day) {
            counts[status] += row.count;
        }
        per_source.entry(row.source_id.clone()).or_default()[status] += row.count;
        let destination = row.destination_id.clone().unwrap_or_else(|| "(none)".to_owned());
        per_destination.entry(destination).or_default()[status] += row.count;
        totals[status] += row.count;
        if let Some(bucket) = row.latency_bucket.filter(|bucket| *bucket < latency.len()) {
            latency[bucket] += row.count;
        }
    }
    let body = html! {
        div.heading {
            h1 { "Overview" }
            form.filters method="get" action="/overview" {
                label { "Days " input type="number" name="days" min="1" max="366" value=(days); }
                button type="submit" { "Show" }
            }
        }
        p.hint { "Transfers that arrived in the last " (days) " day(s), by the UTC day they arrived." }
        ul.totals {
            @for (position, status) in RegisterStatus::ALL.iter().enumerate() {
                li { (status_badge(*status)) " " strong data-total=(status.as_str()) { (totals[position]) } }
            }
        }
        ul.legend {
            @for status in RegisterStatus::ALL { li { span class={"swatch fill-" (status.as_str())} {} (status.as_str()) } }
        }
        h2 { "Per day" }
        (days_chart(&per_day))
        h2 { "By source" }
        (names_chart("Transfers by source", &per_source))
        h2 { "By destination" }
        (names_chart("Transfers by destination", &per_destination))
        h2 { "Delivery latency" }
        p.hint {
            "From a lead's arrival to its delivery, for delivered transfers. "
            @match (percentile(&latency, 0.5), percentile(&latency, 0.95)) {
                (Some(median), Some(p95)) => { "Median " strong { (median) } ", 95th percentile " strong { (p95) } "." }
                _ => "Nothing was delivered in this window.",
            }
        }
        (latency_chart(&latency))
    };
    Ok(page_response(StatusCode::OK, shell("Overview", "/overview", Some(&session), body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_bucket_bounds() {
        let mut buckets = vec![0u64; LATENCY_BOUNDS_MS.len() + 1];
        buckets[0] = 50;
        buckets[3] = 45;
        buckets[LATENCY_BOUNDS_MS.len()] = 5;
        assert_eq!(percentile(&buckets, 0.5).as_deref(), Some("< 100 ms"));
        assert_eq!(percentile(&buckets, 0.95).as_deref(), Some("< 1.0 s"));
        assert_eq!(percentile(&buckets, 0.99).as_deref(), Some("≥ 30 min 0 s"));
        assert_eq!(percentile(&[0; 3], 0.5), None);
    }
}
