-- What a reader asks of the atlas (atlas.queries, the TUI, any DuckDB client): each rule here is
-- the only copy of it, so the Models screen, the detail screen and a hand-written query agree.
--
--   size_value(size)                 parameter count a size label names (70m → 7e7), else NULL
--   variant_textsets()               table (key, textsets): the sets each variant has vectors on
--   model_info(key)                  table: one variant's columns with revision and created_at
--   related_variants(key)            table (relation, key): parent, fine-tunes, checkpoints, …
--   training_runs()                  table (family, size, seed, n_checkpoints, label)
--   run_textsets(family, size, seed [, quant]) table (textset): the sets holding every checkpoint
--                                    of a run (quant: the run of a quantized variant)

-- The parameter count a label like 70m, 1.4b or 7B names; NULL for a label naming none (e.g.
-- "s"). Sizes sort by it, so 160m comes before 1b. The label's pattern and units are
-- atlas.keys.SIZE_PATTERN and SIZE_UNITS, written in as this file is applied.
CREATE OR REPLACE MACRO size_value(size) AS CASE
    WHEN regexp_full_match(lower(trim(size)), {{SIZE_PATTERN}})
    THEN CAST(regexp_extract(lower(trim(size)), {{SIZE_PATTERN}}, 1) AS DOUBLE)
         * pow(1000, strpos({{SIZE_UNITS}}, right(lower(trim(size)), 1)))
END;

-- From vector_rows, not loglik_vectors: that view joins every vector's ℓ back from its parts.
CREATE OR REPLACE MACRO variant_textsets() AS TABLE
SELECT r.key, string_agg(t.name, ', ' ORDER BY t.name) AS textsets
FROM vector_rows r JOIN textsets t USING (textset_id) GROUP BY r.key;

-- model_variants' columns and what only the models table holds (revision, created_at).
CREATE OR REPLACE MACRO model_info(query_key) AS TABLE
SELECT key, family, size, n_params, seed, quant, layer, checkpoint, step, parent, source,
       revision, created_at
FROM models WHERE key = resolve_key(query_key);

-- The variants related to one: its parent, fine-tunes of it (up to 6), the previous and next
-- checkpoint of its run, other seeds and other sizes of the same variant (up to 6 each, seeds
-- in order, sizes small → large). Key columns match with NULLs equal. One pass over
-- model_variants (a view over two scans of models) marks how each variant relates, and each
-- group is a top-N (ORDER BY … LIMIT) then ranked: at 10⁶ sizes of one family, five scans of the
-- view and a window sorting each whole group took 2.2× the CPU.
CREATE OR REPLACE MACRO related_variants(query_key) AS TABLE
WITH variants AS MATERIALIZED (SELECT * FROM model_variants),
me AS MATERIALIZED (SELECT * FROM variants WHERE key = resolve_key(query_key)),
kin AS MATERIALIZED (
    SELECT m.key, m.family, m.size, m.seed, m.quant, m.layer, m.step, m.parent = me.key AS child,
           m.family = me.family AND m.quant IS NOT DISTINCT FROM me.quant
               AND m.layer IS NOT DISTINCT FROM me.layer AS same_kind,
           m.size = me.size AS same_size, m.seed IS NOT DISTINCT FROM me.seed AS same_seed,
           m.checkpoint IS NOT DISTINCT FROM me.checkpoint AS same_checkpoint,
           m.step < me.step AS before, m.step > me.step AS after
    FROM variants m, me WHERE m.family = me.family OR m.parent = me.key),
found AS (
    SELECT 0 AS grp, 1 AS rank, 'parent' AS relation, parent AS key FROM me
    WHERE parent IS NOT NULL
    UNION ALL
    SELECT 1, row_number() OVER (ORDER BY family, size, seed, quant, layer, step, key),
           'fine-tune', key
    FROM (SELECT * FROM kin WHERE child
          ORDER BY family, size, seed, quant, layer, step, key LIMIT 6)
    UNION ALL
    SELECT 2, 1, 'previous checkpoint', key
    FROM (SELECT key FROM kin WHERE same_kind AND same_size AND same_seed AND before
          ORDER BY step DESC, key DESC LIMIT 1)
    UNION ALL
    SELECT 3, 1, 'next checkpoint', key
    FROM (SELECT key FROM kin WHERE same_kind AND same_size AND same_seed AND after
          ORDER BY step, key LIMIT 1)
    UNION ALL
    SELECT 4, row_number() OVER (ORDER BY seed NULLS FIRST, key), 'other seed', key
    FROM (SELECT * FROM kin WHERE same_kind AND same_size AND NOT same_seed AND same_checkpoint
          ORDER BY seed NULLS FIRST, key LIMIT 6)
    UNION ALL
    SELECT 5, row_number() OVER (ORDER BY size_value(size) NULLS LAST, size, key),
           'other size', key
    FROM (SELECT * FROM kin WHERE same_kind AND NOT same_size AND same_seed AND same_checkpoint
          ORDER BY size_value(size) NULLS LAST, size, key LIMIT 6))
SELECT relation, key FROM found WHERE key <> (SELECT key FROM me) ORDER BY grp, rank;

-- Training runs: the output variants (no quant, no layer) of one (family, size, seed) with two
-- or more numbered checkpoints, labelled as everywhere else (run_label, analysis.sql).
CREATE OR REPLACE MACRO training_runs() AS TABLE
SELECT family, size, seed, count(DISTINCT step) AS n_checkpoints,
       run_label(family, size, seed) AS label
FROM model_variants
WHERE quant IS NULL AND layer IS NULL AND step IS NOT NULL
GROUP BY family, size, seed HAVING count(DISTINCT step) >= 2
ORDER BY family, size, seed NULLS FIRST;

-- The text sets on which every checkpoint of a run has a vector (a trajectory needs one).
CREATE OR REPLACE MACRO run_textsets(run_family, run_size, run_seed, run_quant := NULL) AS TABLE
WITH run AS (
    SELECT key FROM model_variants
    WHERE family = run_family AND size = run_size AND seed IS NOT DISTINCT FROM run_seed
      AND quant IS NOT DISTINCT FROM run_quant AND layer IS NULL AND step IS NOT NULL)
SELECT v.textset FROM run JOIN loglik_vectors v USING (key)
GROUP BY v.textset HAVING count(*) = (SELECT count(*) FROM run)
ORDER BY v.textset;
