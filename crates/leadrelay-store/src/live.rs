//! The configuration in force in a process: loaded from the store once, replaced only by
//! what the store returns after a change, and published to whoever watches it (the delivery
//! service wakes on changes).

use std::sync::Arc;

use leadrelay_domain::compiled::CompiledRules;
use leadrelay_domain::config::{Config, ConfigChange};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{ConfigWriteError, Store, StoreResult};

/// A configuration with its rule sets compiled once.
pub struct LiveConfig {
    config: Config,
    pub rules: CompiledRules,
}

impl LiveConfig {
    pub fn new(config: Config) -> Self {
        let rules = CompiledRules::new(&config);
        Self { config, rules }
    }
}

impl std::ops::Deref for LiveConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

/// The configuration in force, and the one way to change it.
pub struct ConfigHandle {
    store: Arc<dyn Store>,
    current: watch::Sender<Arc<LiveConfig>>,
    /// Held from a change's write to the store until the new configuration is published, so
    /// that the published one never goes back to an older configuration.
    changes: tokio::sync::Mutex<()>,
    /// When the configuration in force was read from the store (the start of that read).
    read_at: std::sync::Mutex<Instant>,
}

impl ConfigHandle {
    pub async fn load(store: Arc<dyn Store>) -> StoreResult<Arc<Self>> {
        let read_at = Instant::now();
        let config = store.load_config().await?;
        let (current, _) = watch::channel(Arc::new(LiveConfig::new(config)));
        Ok(Arc::new(Self {
            store,
            current,
            changes: tokio::sync::Mutex::new(()),
            read_at: std::sync::Mutex::new(read_at),
        }))
    }

    fn set_read_at(&self, at: Instant) {
        *self.read_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = at;
    }

    pub fn current(&self) -> Arc<LiveConfig> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every configuration put in force from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<LiveConfig>> {
        self.current.subscribe()
    }

    /// Puts the stored configuration in force again, after another node or process changed it.
    pub async fn reload(&self) -> StoreResult<()> {
        let _serial = self.changes.lock().await;
        self.read_locked().await
    }

    /// The configuration in force, read again from the store unless it was read after
    /// `since`. A request that does not find an object calls this with the time it arrived:
    /// a change another process (`leadrelay apply`) or node made before the request is then
    /// always in force for it, without waiting for the change to be noticed.
    pub async fn current_since(&self, since: Instant) -> StoreResult<Arc<LiveConfig>> {
        let _serial = self.changes.lock().await;
        let read_at = *self.read_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if read_at < since {
            self.read_locked().await?;
        }
        Ok(self.current())
    }

    /// Reads the stored configuration and puts it in force; the caller holds `changes`.
    async fn read_locked(&self) -> StoreResult<()> {
        let read_at = Instant::now();
        let config = self.store.load_config().await?;
        if self.current.borrow().config != config {
            self.current.send_replace(Arc::new(LiveConfig::new(config)));
        }
        self.set_read_at(read_at);
        Ok(())
    }

    /// Applies a change through the store and puts the result in force.
    pub async fn change(&self, change: ConfigChange) -> Result<Arc<LiveConfig>, ConfigWriteError> {
        let _serial = self.changes.lock().await;
        let read_at = Instant::now();
        let config = Arc::new(LiveConfig::new(self.store.change_config(change).await?));
        self.current.send_replace(config.clone());
        self.set_read_at(read_at);
        Ok(config)
    }
}
