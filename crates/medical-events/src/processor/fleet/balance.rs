//! Which buckets to take and how many to give up: each live processor holds
//! about `BUCKETS / live` of them (rounded up, so all are covered).

use rand::seq::SliceRandom;

use super::leases::LeaseView;
use crate::bucket::BUCKETS;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Lease ids to try to acquire, most promising first.
    pub acquire: Vec<String>,
    /// How many held buckets to hand over.
    pub release: usize,
}

/// The fair share of one of `live` processors.
pub fn share(live: usize) -> usize {
    (BUCKETS as usize).div_ceil(live.max(1))
}

/// `held`: buckets this instance holds and is not already releasing;
/// `abandoned`: sessions that ended (their leases may be taken over).
pub fn plan(
    me: &str,
    live: usize,
    held: usize,
    leases: &[LeaseView],
    abandoned: &[String],
) -> Plan {
    let share = share(live);
    if held > share {
        return Plan {
            acquire: Vec::new(),
            release: held - share,
        };
    }
    let mut free = Vec::new();
    let mut expired = Vec::new();
    for lease in leases.iter().filter(|l| l.bucket.is_some()) {
        match &lease.owner {
            None => free.push(lease.id.clone()),
            Some(owner) if owner != me && abandoned.contains(owner) => {
                expired.push(lease.id.clone())
            }
            Some(_) => {}
        }
    }
    // Random order, so instances starting together rarely race for the same one.
    let mut rng = rand::rng();
    free.shuffle(&mut rng);
    expired.shuffle(&mut rng);
    free.extend(expired);
    free.truncate(share - held);
    Plan {
        acquire: free,
        release: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(bucket: i32, owner: Option<&str>) -> LeaseView {
        LeaseView {
            id: format!("bucket:{bucket}"),
            bucket: Some(bucket),
            owner: owner.map(str::to_owned),
            epoch: 1,
        }
    }

    #[test]
    fn shares_cover_every_bucket() {
        for live in 1..=300 {
            assert!(share(live) * live >= BUCKETS as usize, "{live}");
        }
        assert_eq!(share(1), 256);
        assert_eq!(share(3), 86);
    }

    #[test]
    fn a_newcomer_takes_free_then_expired_leases_up_to_its_share() {
        let mut leases: Vec<LeaseView> = (0..256).map(|b| lease(b, Some("other"))).collect();
        leases[0] = lease(0, None);
        leases[1] = lease(1, Some("dead"));
        let plan = plan("me", 2, 126, &leases, &["dead".to_owned()]);
        assert_eq!(
            plan.acquire,
            vec!["bucket:0".to_owned(), "bucket:1".to_owned()]
        );
        assert_eq!(plan.release, 0);
    }

    #[test]
    fn an_instance_over_its_share_gives_the_excess_up() {
        let leases: Vec<LeaseView> = (0..256).map(|b| lease(b, Some("me"))).collect();
        assert_eq!(plan("me", 3, 256, &leases, &[]).release, 256 - 86);
    }
}
