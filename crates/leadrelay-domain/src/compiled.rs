//! Every rule set of a configuration, compiled once per configuration rather than per lead.

use std::collections::HashMap;

use crate::config::Config;
use crate::rules::CompiledRuleSet;

/// The compiled filters of a configuration, by the id of the object that owns them.
#[derive(Clone, Debug, Default)]
pub struct CompiledRules {
    flow_filters: HashMap<String, Vec<(String, CompiledRuleSet)>>,
    source_filters: HashMap<String, (String, CompiledRuleSet)>,
    destination_filters: HashMap<String, CompiledRuleSet>,
}

impl CompiledRules {
    pub fn new(config: &Config) -> Self {
        let flow_filters = config
            .flows
            .values()
            .map(|flow| {
                let filters = flow.filters.iter().map(|filter| (filter.name.clone(), filter.rules.compile())).collect();
                (flow.id.clone(), filters)
            })
            .collect();
        let source_filters = config
            .sources
            .values()
            .filter_map(|source| {
                let rules = source.filter.as_ref()?;
                Some((source.id.clone(), (format!("source:{}", source.id), rules.compile())))
            })
            .collect();
        let destination_filters = config
            .destinations
            .values()
            .filter_map(|destination| Some((destination.id.clone(), destination.filter.as_ref()?.compile())))
            .collect();
        Self { flow_filters, source_filters, destination_filters }
    }

    /// The filters a lead from this source in this flow passes through, in order: the source's
    /// own filter first, then the flow's.
    pub fn lead_filters<'a>(
        &'a self,
        flow_id: &str,
        source_id: &str,
    ) -> impl Iterator<Item = (&'a str, &'a CompiledRuleSet)> {
        let source = self.source_filters.get(source_id).map(|(name, rules)| (name.as_str(), rules));
        let flow = self.flow_filters.get(flow_id).into_iter().flatten().map(|(name, rules)| (name.as_str(), rules));
        source.into_iter().chain(flow)
    }

    pub fn destination_filter(&self, destination_id: &str) -> Option<&CompiledRuleSet> {
        self.destination_filters.get(destination_id)
    }
}
