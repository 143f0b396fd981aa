-- Lookup keys are case-folded by Rollcall, no longer by PostgreSQL.
--
-- scim_user.user_name_lower / external_id_lower and scim_group.display_name_lower /
-- external_id_lower keep their names and indexes, but the projector now computes them with
-- Unicode full case folding (rollcall_scim::case::fold), the folding of the uniqueness claims and
-- of every filter. Before, they were lower(value), whose result depends on the database's
-- locale and disagreed with the claims ('İlker' was claimed but not found; 'straße' and
-- 'STRASSE' were one name to neither).
--
-- SQL cannot compute the folding, so rows keyed before are keyed again by the projector when it
-- starts (rollcall_store::Store::rekey_lookup_keys), which then records the folding here. A
-- folding recorded under another name (a later Unicode version) keys them again.
CREATE TABLE lookup_key_folding (
    folding    text PRIMARY KEY,
    keyed_at   timestamptz NOT NULL DEFAULT now()
);
