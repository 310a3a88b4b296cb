-- Views in SQL (atlas.analysis.views fits them; this file applies them): the views table and
-- what applies a stored view to a vector. Applied before macros.sql, whose kl, kl_se and
-- nearest take `view := NAME` through these (DuckDB binds a macro's body when it is created, so
-- what a macro calls must exist first; nothing here calls macros.sql).
--
--   apply_view(loglik, view)       {loglik: the viewed DOUBLE[], mean_bytes: the view's B̄}
--   view_of(view [, textset])      the view's text set and what it applies (one row)

-- Views derived from a model set (#15): kind clip, drop-texts or clip+drop-texts (stages in
-- order); params as the fitted stage's object, or one object per stage when composed.
CREATE TABLE IF NOT EXISTS views (
    name           VARCHAR PRIMARY KEY,
    kind           VARCHAR NOT NULL,          -- clip | drop-texts | …
    params         JSON    NOT NULL,
    textset        VARCHAR NOT NULL,          -- a textsets.name
    model_set_hash VARCHAR NOT NULL,          -- SHA-256 of the sorted keys, one per line
    created_at     TIMESTAMP DEFAULT current_timestamp
);

-- The name of a stored view that this version can apply on `textset_name` (NULL: any), else an
-- error saying what was wrong and how to fix it; NULL for a NULL name (no view: raw vectors).
CREATE OR REPLACE MACRO resolve_view(view_name, textset_name) AS (
    SELECT CASE
        WHEN view_name IS NULL THEN NULL
        WHEN count(v.name) = 0 THEN error(format(
            'no view ''{}'' in this atlas (views: {}); make one with `atlas view create NAME` '
            || 'or pass the name of a stored one as view := ''NAME''', view_name,
            coalesce((SELECT string_agg(name, ', ' ORDER BY name) FROM views), 'none')))
        WHEN list_sort(string_split(first(v.kind), '+'))
             NOT IN (['clip'], ['drop-texts'], ['clip', 'drop-texts']) THEN error(format(
            'view ''{}'' has kind ''{}'', which this atlas version cannot apply (it knows clip, '
            || 'drop-texts); upgrade atlas or drop the view', view_name, first(v.kind)))
        WHEN textset_name IS NOT NULL AND first(v.textset) <> textset_name THEN error(format(
            'view ''{}'' is fitted on text set ''{}'', not ''{}''; measure on ''{}'' (leave the '
            || 'text set out) or fit a view on ''{}''', view_name, first(v.textset),
            textset_name, first(v.textset), textset_name))
        ELSE first(v.name)
    END
    FROM views v WHERE v.name = view_name);

-- A stage's params: the params themselves for a one-stage view, else the stage's object.
CREATE OR REPLACE MACRO view_stage(kind, params, stage) AS CASE
    WHEN NOT list_contains(string_split(kind, '+'), stage) THEN NULL
    WHEN kind = stage THEN params
    ELSE params -> stage
END;

-- One row per view named (none for NULL): its text set, clip threshold (-inf: no clip), a keep
-- mask over the texts (false: dropped) and B̄ over the kept texts (what Python's views.apply
-- computes from the texts' byte lengths).
CREATE OR REPLACE MACRO view_of(view_name, textset_name := NULL) AS TABLE
WITH stored AS (
    SELECT v.name, v.textset, t.textset_id, t.n_texts,
           coalesce(view_stage(v.kind, v.params, 'clip') ->> 'threshold', '-inf')::DOUBLE
               AS threshold,
           coalesce(view_stage(v.kind, v.params, 'drop-texts') -> 'dropped', '[]')::INTEGER[]
               AS dropped
    FROM views v JOIN textsets t ON t.name = v.textset
    WHERE view_name IS NOT NULL AND v.name = resolve_view(view_name, textset_name))
SELECT name, textset, textset_id, threshold,
       list_transform(range(n_texts), lambda i: NOT list_contains(dropped, i)) AS keep,
       (SELECT avg(x.n_bytes) FROM texts x
        WHERE x.textset_id = s.textset_id AND NOT list_contains(s.dropped, x.idx)) AS mean_bytes
FROM stored s;

-- Values clipped at a view's threshold, as DOUBLE[] (no lambda where the view has no clip).
CREATE OR REPLACE MACRO view_clip(loglik, threshold) AS CASE
    WHEN threshold = '-inf'::DOUBLE THEN loglik::DOUBLE[]
    ELSE list_transform(loglik, lambda x: greatest(x::DOUBLE, threshold))
END;

-- ℓ through a view's threshold and keep mask (view_of's columns): clip, then drop.
CREATE OR REPLACE MACRO view_loglik(loglik, threshold, keep) AS CASE
    WHEN len(loglik) = len(keep) THEN list_filter(view_clip(loglik, threshold),
                                                  lambda x, i: keep[i])
    ELSE error(format('a vector of {} values through a view of a text set of {} texts: apply '
                      || 'a view to vectors of its own text set', len(loglik), len(keep)))
END;

CREATE OR REPLACE MACRO apply_view(loglik, view_name) AS (
    SELECT {'loglik': view_loglik(loglik, threshold, keep), 'mean_bytes': mean_bytes}
    FROM view_of(view_name));
