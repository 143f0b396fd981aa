//! Paged reads of the read models: a page of the rows a query matches, in creation order, and
//! how many it matches in all.

use sqlx::postgres::PgRow;
use sqlx::{FromRow, Postgres, QueryBuilder, Row};

use crate::{Store, StoreError};

/// A row with the number of all rows its query matches (a window count).
struct Counted<R> {
    row: R,
    total: i64,
}

impl<'r, R: FromRow<'r, PgRow>> FromRow<'r, PgRow> for Counted<R> {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            row: R::from_row(row)?,
            total: row.try_get("total")?,
        })
    }
}

/// The table a paged read selects from.
pub(crate) struct Table<'t> {
    /// `FROM` (with its alias, if any).
    pub from: &'t str,
    /// The selected columns.
    pub columns: &'t str,
    /// The creation order.
    pub order: &'t str,
}

impl Store {
    /// A page (`offset`, `limit`) of the rows of `table` that `filter` keeps (it pushes the
    /// `WHERE` clause), and how many it keeps in all. One round trip, the count coming with the
    /// page by a window; a second only when the page is empty or not wanted.
    pub(crate) async fn find_page<'a, R>(
        &self,
        table: Table<'_>,
        filter: impl Fn(&mut QueryBuilder<'a, Postgres>),
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<R>, usize), StoreError>
    where
        R: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let count = || async {
            let mut count = QueryBuilder::new(format!("SELECT count(*) FROM {}", table.from));
            filter(&mut count);
            let total: i64 = count.build_query_scalar().fetch_one(self.pool()).await?;
            Ok::<usize, StoreError>(total as usize)
        };
        if limit == 0 {
            return Ok((Vec::new(), count().await?));
        }
        let mut query = QueryBuilder::new(format!(
            "SELECT {}, count(*) OVER () AS total FROM {}",
            table.columns, table.from
        ));
        filter(&mut query);
        query
            .push(format!(" ORDER BY {} OFFSET ", table.order))
            .push_bind(offset as i64)
            .push(" LIMIT ")
            .push_bind(limit as i64);
        let rows: Vec<Counted<R>> = query
            .build_query_as::<Counted<R>>()
            .fetch_all(self.pool())
            .await?;
        let total = match rows.first() {
            Some(first) => first.total as usize,
            // An empty page: either nothing matches, or the page starts past the end.
            None if offset == 0 => 0,
            None => count().await?,
        };
        Ok((rows.into_iter().map(|r| r.row).collect(), total))
    }
}
