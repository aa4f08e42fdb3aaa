//! PostgreSQL as the catalog store: items, deleted items and user profiles, with the schema
//! migrated at start-up (`storage/migrations`). Every statement is parameterised. The node
//! serves from its in-memory view; PostgreSQL is written through and read at start.

use std::time::Duration;

use async_trait::async_trait;
use common::Item;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::catalog::Catalog;
use crate::error::Result;

pub struct PgCatalog {
    pool: PgPool,
}

impl PgCatalog {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Catalog for PgCatalog {
    async fn upsert(&self, item: &Item) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO items (item_id, title, categories, tags, attributes, available, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (item_id) DO UPDATE SET title = EXCLUDED.title, categories = EXCLUDED.categories,
               tags = EXCLUDED.tags, attributes = EXCLUDED.attributes, available = EXCLUDED.available,
               updated_at = EXCLUDED.updated_at",
        )
        .bind(&item.item_id)
        .bind(&item.title)
        .bind(&item.categories)
        .bind(&item.tags)
        .bind(sqlx::types::Json(&item.attributes))
        .bind(item.available)
        .bind(item.updated_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM deleted_items WHERE item_id = $1")
            .bind(&item.item_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete(&self, item_id: &str, at: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM items WHERE item_id = $1")
            .bind(item_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO deleted_items (item_id, deleted_at) VALUES ($1, $2)
             ON CONFLICT (item_id) DO UPDATE SET deleted_at = EXCLUDED.deleted_at",
        )
        .bind(item_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn load_all(&self) -> Result<(Vec<Item>, Vec<String>)> {
        type Row = (
            String,
            String,
            Vec<String>,
            Vec<String>,
            sqlx::types::Json<serde_json::Map<String, serde_json::Value>>,
            bool,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT item_id, title, categories, tags, attributes, available, updated_at FROM items",
        )
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .into_iter()
            .map(
                |(item_id, title, categories, tags, attributes, available, updated_at)| Item {
                    item_id,
                    title,
                    categories,
                    tags,
                    attributes: attributes.0,
                    available,
                    updated_at,
                },
            )
            .collect();
        let deleted: Vec<(String,)> = sqlx::query_as("SELECT item_id FROM deleted_items")
            .fetch_all(&self.pool)
            .await?;
        Ok((items, deleted.into_iter().map(|(id,)| id).collect()))
    }

    async fn put_profile(&self, user_id: &str, profile: &serde_json::Value) -> Result<()> {
        sqlx::query(
            "INSERT INTO user_profiles (user_id, profile, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET profile = EXCLUDED.profile, updated_at = EXCLUDED.updated_at",
        )
        .bind(user_id)
        .bind(sqlx::types::Json(profile))
        .bind(common::now_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_profile(&self, user_id: &str) -> Result<Option<serde_json::Value>> {
        let row: Option<(sqlx::types::Json<serde_json::Value>,)> =
            sqlx::query_as("SELECT profile FROM user_profiles WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(p,)| p.0))
    }

    async fn delete_profile(&self, user_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM user_profiles WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn profiles(&self) -> Result<Vec<(String, serde_json::Value)>> {
        let rows: Vec<(String, sqlx::types::Json<serde_json::Value>)> =
            sqlx::query_as("SELECT user_id, profile FROM user_profiles")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(id, p)| (id, p.0)).collect())
    }

    async fn health(&self) -> std::result::Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| format!("postgres: {e}"))
    }
}
