//! The installation's number of partitions (see `rollcall_eventlog::partition`), chosen once and
//! kept in `rollcall_partitioning`, so that every process agrees on it.

use sqlx::PgConnection;

use crate::{checkpoint, Store, StoreError};

/// Reads the installation's number of partitions, holding it (`FOR SHARE`) until the
/// transaction ends: a projector checks it in every batch, so that a process started before a
/// change of the partitioning never applies a batch under the old one.
pub async fn hold(connection: &mut PgConnection) -> Result<u16, StoreError> {
    let partitions: Option<i32> =
        sqlx::query_scalar("SELECT partitions FROM rollcall_partitioning FOR SHARE")
            .fetch_optional(connection)
            .await?;
    Ok(count(partitions))
}

/// The partition count a recorded `partitions` stands for (1 if none was ever chosen).
pub(crate) fn count(partitions: Option<i32>) -> u16 {
    partitions.map_or(1, |p| p.clamp(1, i32::from(u16::MAX)) as u16)
}

/// Why the partitioning cannot change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The partitioning in force (as requested, recorded, or just changed to).
    Partitions(u16),
    /// A change the installation cannot make in place.
    Refused {
        /// The partitioning in force.
        current: u16,
        /// What was asked for.
        requested: u16,
    },
}

impl Store {
    /// The installation's number of partitions (1 when none was ever chosen).
    pub async fn partitions(&self) -> Result<u16, StoreError> {
        let mut connection = self.pool().acquire().await?;
        hold(&mut connection).await
    }

    /// Records `requested` partitions (or, with `None`, keeps what is recorded). An installation
    /// with one partition moves to more in place: every new partition's checkpoint starts at
    /// the single projector's (`single` is its checkpoint name, `names` the new partitions'),
    /// which the caller guarantees is not projecting meanwhile (it holds its lease). Other
    /// changes are refused (they need a rebuild).
    pub async fn choose_partitions(
        &self,
        requested: Option<u16>,
        single: &str,
        names: &[String],
    ) -> Result<Choice, StoreError> {
        let mut transaction = self.begin().await?;
        // An installation that never chose has today's layout, one partition (it may have a
        // history under the single projector's checkpoint): a request for more moves it below.
        sqlx::query(
            "INSERT INTO rollcall_partitioning (partitions) VALUES (1) ON CONFLICT DO NOTHING",
        )
        .execute(&mut *transaction)
        .await?;
        let current: i32 =
            sqlx::query_scalar("SELECT partitions FROM rollcall_partitioning FOR UPDATE")
                .fetch_one(&mut *transaction)
                .await?;
        let current = current.clamp(1, i32::from(u16::MAX)) as u16;
        let requested = match requested {
            Some(requested) if requested != current => requested,
            _ => {
                // The choice made now (the first start's) is kept.
                transaction.commit().await?;
                return Ok(Choice::Partitions(current));
            }
        };
        if current != 1 || names.len() != usize::from(requested) {
            return Ok(Choice::Refused { current, requested });
        }
        let from = checkpoint::get(&mut transaction, single).await?;
        for name in names {
            checkpoint::set(&mut transaction, name, from).await?;
        }
        sqlx::query("UPDATE rollcall_partitioning SET partitions = $1, chosen_at = now()")
            .bind(i32::from(requested))
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(Choice::Partitions(requested))
    }
}
