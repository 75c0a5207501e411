//! Every rule set of a configuration, compiled once per configuration rather than per lead.

use std::collections::HashMap;

use crate::config::{Config, Flow};
use crate::fields::FieldType;
use crate::rules::{CompiledRuleSet, RuleSet};
use crate::typed_rules::typed;

/// A flow's rules compiled with their operands read as the flow's field types.
fn compile_for(rules: &RuleSet, type_of: &dyn Fn(&str) -> Option<FieldType>) -> CompiledRuleSet {
    typed(rules, type_of).compile()
}

fn types_of(flow: &Flow) -> impl Fn(&str) -> Option<FieldType> + '_ {
    |name| flow.field(name).map(|field| field.field_type)
}

/// The compiled filters of a configuration, by the id of the object that owns them.
#[derive(Clone, Debug, Default)]
pub struct CompiledRules {
    flow_filters: HashMap<String, Vec<(String, CompiledRuleSet)>>,
    source_filters: HashMap<String, (String, CompiledRuleSet)>,
    destination_filters: HashMap<String, CompiledRuleSet>,
    /// Each destination's caps' rules, in the order of its caps (`None` for a cap without).
    cap_rules: HashMap<String, Vec<Option<(RuleSet, CompiledRuleSet)>>>,
}

/// The field types the flows that list a destination agree on: a destination serves every
/// flow that lists it, so a field is read as its type only when those flows agree.
pub fn destination_field_types<'a>(
    config: &'a Config,
    destination_id: &'a str,
) -> impl Fn(&str) -> Option<FieldType> + 'a {
    move |name: &str| {
        let mut types = config
            .flows
            .values()
            .filter(|flow| flow.destinations.iter().any(|id| id == destination_id))
            .filter_map(|flow| flow.field(name).map(|field| field.field_type));
        let first = types.next()?;
        types.all(|other| other == first).then_some(first)
    }
}

impl CompiledRules {
    pub fn new(config: &Config) -> Self {
        let flow_filters = config
            .flows
            .values()
            .map(|flow| {
                let filters = flow
                    .filters
                    .iter()
                    .map(|filter| (filter.name.clone(), compile_for(&filter.rules, &types_of(flow))))
                    .collect();
                (flow.id.clone(), filters)
            })
            .collect();
        let source_filters = config
            .sources
            .values()
            .filter_map(|source| {
                let rules = source.filter.as_ref()?;
                let compiled = match config.flows.get(&source.flow_id) {
                    Some(flow) => compile_for(rules, &types_of(flow)),
                    None => rules.compile(),
                };
                Some((source.id.clone(), (format!("source:{}", source.id), compiled)))
            })
            .collect();
        let destination_filters = config
            .destinations
            .values()
            .filter_map(|destination| {
                let rules = destination.filter.as_ref()?;
                Some((destination.id.clone(), compile_for(rules, &destination_field_types(config, &destination.id))))
            })
            .collect();
        let cap_rules = config
            .destinations
            .values()
            .map(|destination| {
                let type_of = destination_field_types(config, &destination.id);
                let rules = destination
                    .caps
                    .iter()
                    .map(|cap| cap.rules.as_ref().map(|rules| (rules.clone(), compile_for(rules, &type_of))));
                (destination.id.clone(), rules.collect())
            })
            .collect();
        Self { flow_filters, source_filters, destination_filters, cap_rules }
    }

    /// The compiled rules of a destination's caps, in the order of its caps.
    pub fn cap_rules(&self, destination_id: &str) -> &[Option<(RuleSet, CompiledRuleSet)>] {
        self.cap_rules.get(destination_id).map_or(&[], Vec::as_slice)
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
