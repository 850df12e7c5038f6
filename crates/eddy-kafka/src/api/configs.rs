//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs (topic settings; the broker's
//! own are read-only).

use eddy_broker::TopicConfig;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;

use super::{code, str_bytes, Handler, RESOURCE_BROKER, RESOURCE_TOPIC};

impl Handler {
    pub(super) fn describe_configs(
        &self,
        r: DescribeConfigsRequest,
        version: i16,
    ) -> DescribeConfigsResponse {
        use describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
        let mut resp = DescribeConfigsResponse::default();
        let defaults = TopicConfig::default();
        for res in r.resources {
            let mut out = DescribeConfigsResult::default();
            out.resource_type = res.resource_type;
            out.resource_name = res.resource_name.clone();
            let entries: Vec<(&str, String, bool)> = match res.resource_type {
                RESOURCE_TOPIC if !self.may_see(res.resource_name.as_str()) => {
                    out.error_code = ResponseError::TopicAuthorizationFailed.code();
                    Vec::new()
                }
                RESOURCE_TOPIC => match self.broker.topic(res.resource_name.as_str()) {
                    Some(t) => {
                        let d = defaults.entries();
                        t.config()
                            .entries()
                            .into_iter()
                            .map(|(k, v)| {
                                let is_default = d.iter().any(|(dk, dv)| *dk == k && *dv == v);
                                (k, v, is_default)
                            })
                            .collect()
                    }
                    None => {
                        out.error_code = ResponseError::UnknownTopicOrPartition.code();
                        out.error_message = Some(str_bytes(&format!(
                            "no topic '{}'",
                            res.resource_name.as_str()
                        )));
                        Vec::new()
                    }
                },
                // this broker's settings that clients look at, read-only
                RESOURCE_BROKER => vec![
                    (
                        "auto.create.topics.enable",
                        self.cfg.auto_create_topics.to_string(),
                        true,
                    ),
                    (
                        "num.partitions",
                        self.cfg.default_partitions.to_string(),
                        true,
                    ),
                    (
                        "socket.request.max.bytes",
                        self.cfg.max_request_bytes.to_string(),
                        true,
                    ),
                ],
                other => {
                    out.error_code = ResponseError::InvalidRequest.code();
                    out.error_message = Some(str_bytes(&format!(
                        "resource type {other} is not supported"
                    )));
                    Vec::new()
                }
            };
            let wanted = res.configuration_keys.as_ref();
            out.configs = entries
                .into_iter()
                .filter(|(k, _, _)| wanted.is_none_or(|w| w.iter().any(|x| x.as_str() == *k)))
                .map(|(k, v, is_default)| {
                    let mut c = DescribeConfigsResourceResult::default();
                    c.name = str_bytes(k);
                    c.value = Some(str_bytes(&v));
                    c.read_only = res.resource_type == RESOURCE_BROKER;
                    // 1: topic config, 4: static broker config, 5: default
                    c.config_source = match (res.resource_type, is_default) {
                        (RESOURCE_BROKER, _) => 4,
                        (_, true) => 5,
                        _ => 1,
                    };
                    if version >= 3 {
                        // 2: string, 5: long, 1: boolean, 3: int
                        c.config_type = match k {
                            "cleanup.policy" => 2,
                            "auto.create.topics.enable" => 1,
                            "num.partitions" | "socket.request.max.bytes" => 3,
                            _ => 5,
                        };
                    }
                    c
                })
                .collect();
            resp.results.push(out);
        }
        resp
    }

    /// Apply config changes to a topic: `ops` are (name, op, value) with Kafka's operations
    /// (0 set, 1 delete = back to the default). `replace` starts from the defaults
    /// (AlterConfigs) instead of the current settings (IncrementalAlterConfigs).
    pub(super) fn change_topic_config(
        &self,
        resource_type: i8,
        name: &str,
        ops: &[(String, i8, Option<String>)],
        replace: bool,
        validate_only: bool,
    ) -> (i16, Option<String>) {
        if resource_type != RESOURCE_TOPIC {
            return (
                ResponseError::InvalidRequest.code(),
                Some(format!(
                    "only topic configs can be changed (resource type {resource_type})"
                )),
            );
        }
        if !self.allowed(eddy_broker::Access::Configure, "topic", name) {
            return (
                ResponseError::TopicAuthorizationFailed.code(),
                Some(format!("configure access to topic '{name}' refused")),
            );
        }
        let Some(topic) = self.broker.topic(name) else {
            return (
                ResponseError::UnknownTopicOrPartition.code(),
                Some(format!("no topic '{name}'")),
            );
        };
        let mut config = if replace {
            TopicConfig::default()
        } else {
            topic.config()
        };
        for (k, op, v) in ops {
            let r = match op {
                0 => config.set(k, v.as_deref()),
                1 => config.set(k, None),
                _ => {
                    return (
                        ResponseError::InvalidRequest.code(),
                        Some(format!(
                            "operation {op} on '{k}' is not supported (only set and delete)"
                        )),
                    )
                }
            };
            if let Err(e) = r {
                return (ResponseError::InvalidConfig.code(), Some(e.to_string()));
            }
        }
        if validate_only {
            return (0, None);
        }
        match eddy_broker::run_blocking(|| self.broker.set_topic_config(name, config)) {
            Ok(()) => (0, None),
            Err(e) => (code(&e), Some(e.to_string())),
        }
    }

    pub(super) fn alter_configs(&self, r: AlterConfigsRequest) -> AlterConfigsResponse {
        let mut resp = AlterConfigsResponse::default();
        for res in r.resources {
            let ops: Vec<(String, i8, Option<String>)> = res
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        0,
                        c.value.as_ref().map(|v| v.to_string()),
                    )
                })
                .collect();
            let (err, msg) = self.change_topic_config(
                res.resource_type,
                res.resource_name.as_str(),
                &ops,
                true,
                r.validate_only,
            );
            let mut out = alter_configs_response::AlterConfigsResourceResponse::default();
            out.error_code = err;
            out.error_message = msg.as_deref().map(str_bytes);
            out.resource_type = res.resource_type;
            out.resource_name = res.resource_name;
            resp.responses.push(out);
        }
        resp
    }

    pub(super) fn incremental_alter_configs(
        &self,
        r: IncrementalAlterConfigsRequest,
    ) -> IncrementalAlterConfigsResponse {
        let mut resp = IncrementalAlterConfigsResponse::default();
        for res in r.resources {
            let ops: Vec<(String, i8, Option<String>)> = res
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        c.config_operation,
                        c.value.as_ref().map(|v| v.to_string()),
                    )
                })
                .collect();
            let (err, msg) = self.change_topic_config(
                res.resource_type,
                res.resource_name.as_str(),
                &ops,
                false,
                r.validate_only,
            );
            let mut out =
                incremental_alter_configs_response::AlterConfigsResourceResponse::default();
            out.error_code = err;
            out.error_message = msg.as_deref().map(str_bytes);
            out.resource_type = res.resource_type;
            out.resource_name = res.resource_name;
            resp.responses.push(out);
        }
        resp
    }
}
