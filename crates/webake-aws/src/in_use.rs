//! Which AMIs are in use in a region, so that `webake gc` never removes one: AMIs of instances
//! in any state but terminated, of launch templates (their default and latest versions), and
//! of Auto Scaling groups (their launch configurations, and launch template versions they pin
//! by number). Every call goes through webake's retry policy; an answer that cannot be had is
//! an error (the caller then removes nothing), never an empty list.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use aws_sdk_autoscaling::types::{AutoScalingGroup, LaunchTemplateSpecification};
use aws_sdk_ec2::types::{Filter, LaunchTemplateVersion};
use serde::Serialize;

use crate::client::{RegionClients, Session};
use crate::error::Result;
use crate::reporter::Reporter;
use crate::retry::{Also, Caller, Stop};

/// Instance states that still hold (or will again boot from) their AMI: all but terminated.
pub const LIVE_INSTANCE_STATES: [&str; 5] =
    ["pending", "running", "shutting-down", "stopping", "stopped"];

/// DescribeLaunchTemplateVersions returns at most this many versions per page (the API's cap).
const LAUNCH_TEMPLATE_PAGE: i32 = 200;
/// DescribeLaunchConfigurations takes at most this many names per call.
const LAUNCH_CONFIGURATION_NAMES: usize = 50;

/// What uses an AMI.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AmiUser {
    /// An instance that is not terminated.
    Instance { id: String, state: String },
    /// The default or latest version of a launch template.
    LaunchTemplate {
        id: String,
        name: String,
        version: i64,
        /// `default` or `latest`.
        which: String,
    },
    /// A launch template version an Auto Scaling group pins by number.
    GroupLaunchTemplate {
        group: String,
        template: String,
        version: String,
    },
    /// The launch configuration of Auto Scaling groups.
    LaunchConfiguration { name: String, groups: Vec<String> },
}

impl fmt::Display for AmiUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Instance { id, state } => write!(f, "instance {id} ({state})"),
            Self::LaunchTemplate {
                id,
                name,
                version,
                which,
            } => write!(
                f,
                "launch template {name} ({id}) version {version} ({which})"
            ),
            Self::GroupLaunchTemplate {
                group,
                template,
                version,
            } => write!(
                f,
                "Auto Scaling group {group} (launch template {template} version {version})"
            ),
            Self::LaunchConfiguration { name, groups } => write!(
                f,
                "launch configuration {name} of Auto Scaling group(s) {}",
                groups.join(", ")
            ),
        }
    }
}

/// One use of one AMI in one region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AmiUse {
    pub region: String,
    pub ami_id: String,
    pub user: AmiUser,
}

impl fmt::Display for AmiUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} used by {} in {}",
            self.ami_id, self.user, self.region
        )
    }
}

/// Every use of an AMI in each of `regions` (sorted, without duplicates).
pub async fn amis_in_use(
    session: &Session,
    regions: &[String],
    reporter: &dyn Reporter,
) -> Result<Vec<AmiUse>> {
    let stop = Stop::new();
    let mut out = BTreeSet::new();
    for region in regions {
        let clients = session.region(region);
        let caller = clients.caller(reporter, &stop);
        reporter.step(region, "listing AMIs in use");
        out.extend(instances(&clients, caller).await?);
        out.extend(launch_templates(&clients, caller).await?);
        let asg = session.autoscaling(region);
        let groups = auto_scaling_groups(&asg, caller).await?;
        out.extend(group_launch_templates(&clients, caller, &groups).await?);
        out.extend(launch_configurations(&asg, caller, &groups).await?);
    }
    Ok(out.into_iter().collect())
}

async fn instances(clients: &RegionClients, caller: Caller<'_>) -> Result<Vec<AmiUse>> {
    let states = Filter::builder()
        .name("instance-state-name")
        .set_values(Some(LIVE_INSTANCE_STATES.map(String::from).to_vec()))
        .build();
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = caller
            .call("DescribeInstances", "instances", Also::default(), || {
                clients
                    .ec2
                    .describe_instances()
                    .filters(states.clone())
                    .set_next_token(next.clone())
                    .send()
            })
            .await?;
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            let (Some(ami), Some(id)) = (i.image_id(), i.instance_id()) else {
                continue;
            };
            let state = i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_default();
            out.push(AmiUse {
                region: clients.region.clone(),
                ami_id: ami.to_string(),
                user: AmiUser::Instance {
                    id: id.to_string(),
                    state,
                },
            });
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// The default and latest version of every launch template (one listing: the API describes
/// `$Default` and `$Latest` of all templates when no template is named).
async fn launch_templates(clients: &RegionClients, caller: Caller<'_>) -> Result<Vec<AmiUse>> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = caller
            .call(
                "DescribeLaunchTemplateVersions",
                "$Default and $Latest of every launch template",
                Also::default(),
                || {
                    clients
                        .ec2
                        .describe_launch_template_versions()
                        .versions("$Default")
                        .versions("$Latest")
                        .resolve_alias(true)
                        .max_results(LAUNCH_TEMPLATE_PAGE)
                        .set_next_token(next.clone())
                        .send()
                },
            )
            .await?;
        for v in page.launch_template_versions() {
            let which = if v.default_version() == Some(true) {
                "default"
            } else {
                "latest"
            };
            out.extend(template_use(&clients.region, v, which));
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

fn template_use(region: &str, v: &LaunchTemplateVersion, which: &str) -> Option<AmiUse> {
    let ami = v.launch_template_data()?.image_id()?;
    Some(AmiUse {
        region: region.to_string(),
        ami_id: ami.to_string(),
        user: AmiUser::LaunchTemplate {
            id: v.launch_template_id().unwrap_or_default().to_string(),
            name: v.launch_template_name().unwrap_or_default().to_string(),
            version: v.version_number().unwrap_or_default(),
            which: which.to_string(),
        },
    })
}

async fn auto_scaling_groups(
    asg: &aws_sdk_autoscaling::Client,
    caller: Caller<'_>,
) -> Result<Vec<AutoScalingGroup>> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = caller
            .call(
                "DescribeAutoScalingGroups",
                "Auto Scaling groups",
                Also::default(),
                || {
                    asg.describe_auto_scaling_groups()
                        .set_next_token(next.clone())
                        .send()
                },
            )
            .await?;
        out.extend(page.auto_scaling_groups().iter().cloned());
        match page.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// Every launch template an Auto Scaling group names: its own, and those of its mixed
/// instances policy (the policy's and each override's).
fn group_templates(g: &AutoScalingGroup) -> Vec<&LaunchTemplateSpecification> {
    let mut specs: Vec<&LaunchTemplateSpecification> = g.launch_template().into_iter().collect();
    if let Some(lt) = g.mixed_instances_policy().and_then(|p| p.launch_template()) {
        specs.extend(lt.launch_template_specification());
        specs.extend(
            lt.overrides()
                .iter()
                .filter_map(|o| o.launch_template_specification()),
        );
    }
    specs
}

/// Versions pinned by number (`$Default` and `$Latest` are among the launch templates' uses).
async fn group_launch_templates(
    clients: &RegionClients,
    caller: Caller<'_>,
    groups: &[AutoScalingGroup],
) -> Result<Vec<AmiUse>> {
    let mut out = Vec::new();
    for g in groups {
        let group = g.auto_scaling_group_name().unwrap_or_default();
        for spec in group_templates(g) {
            let version = spec.version().unwrap_or("$Default");
            if version.starts_with('$') {
                continue;
            }
            let template = spec
                .launch_template_id()
                .or(spec.launch_template_name())
                .unwrap_or_default();
            let what = format!("launch template {template} version {version}");
            let page = caller
                .call(
                    "DescribeLaunchTemplateVersions",
                    &what,
                    Also::default(),
                    || {
                        clients
                            .ec2
                            .describe_launch_template_versions()
                            .set_launch_template_id(spec.launch_template_id().map(str::to_string))
                            .set_launch_template_name(
                                spec.launch_template_name().map(str::to_string),
                            )
                            .versions(version)
                            .resolve_alias(true)
                            .send()
                    },
                )
                .await?;
            for v in page.launch_template_versions() {
                let Some(ami) = v.launch_template_data().and_then(|d| d.image_id()) else {
                    continue;
                };
                out.push(AmiUse {
                    region: clients.region.clone(),
                    ami_id: ami.to_string(),
                    user: AmiUser::GroupLaunchTemplate {
                        group: group.to_string(),
                        template: template.to_string(),
                        version: version.to_string(),
                    },
                });
            }
        }
    }
    Ok(out)
}

async fn launch_configurations(
    asg: &aws_sdk_autoscaling::Client,
    caller: Caller<'_>,
    groups: &[AutoScalingGroup],
) -> Result<Vec<AmiUse>> {
    // launch configuration -> the groups that use it
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for g in groups {
        if let Some(lc) = g.launch_configuration_name() {
            users
                .entry(lc.to_string())
                .or_default()
                .push(g.auto_scaling_group_name().unwrap_or_default().to_string());
        }
    }
    let names: Vec<String> = users.keys().cloned().collect();
    let mut out = Vec::new();
    for chunk in names.chunks(LAUNCH_CONFIGURATION_NAMES) {
        let page = caller
            .call(
                "DescribeLaunchConfigurations",
                &chunk.join(", "),
                Also::default(),
                || {
                    asg.describe_launch_configurations()
                        .set_launch_configuration_names(Some(chunk.to_vec()))
                        .max_records(LAUNCH_CONFIGURATION_NAMES as i32)
                        .send()
                },
            )
            .await?;
        for lc in page.launch_configurations() {
            let (Some(name), Some(ami)) = (lc.launch_configuration_name(), lc.image_id()) else {
                continue;
            };
            out.push(AmiUse {
                region: caller.region.to_string(),
                ami_id: ami.to_string(),
                user: AmiUser::LaunchConfiguration {
                    name: name.to_string(),
                    groups: users.get(name).cloned().unwrap_or_default(),
                },
            });
        }
    }
    Ok(out)
}
