-- LM Atlas analysis macros: training trajectories and their diffusion exponents (method.md §5),
-- persisted in the .duckdb file like macros.sql, so any DuckDB client can fit them.
--
--   run_checkpoints(family, size, seed [, textset_name])       a run's checkpoints, numbered
--   trajectory(family, size, seed [, textset_name])            consecutive-checkpoint KL ± SE
--   diffusion_points(family, size, seed, t0 [, lags, textset_name, min_t0])
--                                                                 (t0, step, lag, d_q, d_w)
--   diffusion_fit(family, size, seed, t0 [, lags, textset_name, min_t0])
--                       per start: (t0, c_q, r2_q, n_q, c_w, r2_w, n_w, alpha = c_q / c_w)
--
-- A run is the output variants (quant IS NULL, layer IS NULL) of one (family, size, seed) that
-- have a step and a vector on the text set, in step order. seed NULL selects the run whose seed
-- is unset (IS NOT DISTINCT FROM). The text set may be omitted when the run's vectors are on
-- exactly one. Parameter names differ from every column name on purpose: inside a DuckDB macro a
-- column of the same name silently wins over a parameter.
--
-- `lags` is the reference's window (atlas.analysis.diffusion's `window`, the CLI's --window):
-- `window` is a reserved word in SQL and cannot be a parameter. Pass it by name (lags := 5) or
-- by position: diffusion_fit('pythia', '70m', NULL, NULL, 5). `min_t0 := S` keeps the starts at
-- step ≥ S (P1: 1,000); unlike atlas.analysis.diffusion, whose default is the first step of the
-- evenly spaced tail, its default NULL keeps every start.
--
-- Decisions:
-- * A run with no checkpoints (unknown family, size or seed; or no vector on the named text set)
--   is an error naming the runs there are, as in atlas.analysis.trajectory: an empty result
--   would hide a typo. Asking for a start that is not a checkpoint of the run, or one with fewer
--   than `lags` later checkpoints, is not an error: no rows (t0 NULL: every start that has a full
--   window, so a window longer than the run gives no rows).
-- * d_q = KL_bpb(p_t0, p_t) = ‖c_t − c_t0‖² / N · bpb_scale, from the stored centred vectors
--   (list_distance: vectorised; what kl() computes). d_w = ‖S(W_t) − S(W_t0)‖² from the weight
--   sketches (what weight_sq_distance() computes), NULL where either checkpoint has no sketch;
--   sketches made with different settings are an error, as in weight_sq_distance().
-- * Fits are the OLS slope of ln d on ln lag (regr_slope, regr_r2, regr_count) over the points
--   with d finite and > 0 (others dropped; n_q, n_w count the points used; so is a lag of 0,
--   which only two checkpoints of one run at the same step could give). As in
--   atlas.analysis.diffusion, a slope from fewer than 3 points says nothing: c and r2 are NULL
--   there. alpha is NULL unless both slopes exist and c_w ≠ 0. Per start, the fit equals
--   atlas.analysis.diffusion's (tests/test_sql_analysis.py: to 1e-9; in practice ~1e-15).
--
-- Cost: everything is equality joins on the run's rows (no correlated subqueries, no per-row key
-- resolution, no lambdas), so a fit over every start is one pass over (starts × lags) pairs of
-- vectors. On 2 busy cores: 20 checkpoints × 500 texts (16,384-dim sketches) ~20–40 ms per
-- query; 154 checkpoints × 10,000 texts (Pythia-sized) trajectory ~0.17 s, diffusion_fit over all
-- 144 starts ~0.5 s.

CREATE OR REPLACE MACRO run_label(run_family, run_size, run_seed) AS
    format('{}-{}', run_family, run_size) || coalesce('/s' || run_seed::VARCHAR, '');

-- The run's checkpoints on one text set, numbered i = 1, 2, … in step order, with their centred
-- vectors and weight sketches (NULL where none is stored).
CREATE OR REPLACE MACRO run_checkpoints(run_family, run_size, run_seed, textset_name := NULL)
AS TABLE
WITH run AS MATERIALIZED (
    SELECT m.key, m.step FROM models m
    WHERE m.family = run_family AND m.size = run_size AND m.seed IS NOT DISTINCT FROM run_seed
      AND m.quant IS NULL AND m.layer IS NULL AND m.step IS NOT NULL),
sets AS MATERIALIZED (
    SELECT v.textset_id, t.name AS set_name, t.mean_bytes, count(*) AS n_vectors
    FROM run JOIN vector_rows v ON v.key = run.key JOIN textsets t ON t.textset_id = v.textset_id
    WHERE textset_name IS NULL OR t.name = textset_name
    GROUP BY ALL),
runs AS (  -- for the error message only
    SELECT string_agg(DISTINCT run_label(family, size, seed), ', '
                      ORDER BY run_label(family, size, seed)) AS known
    FROM models WHERE step IS NOT NULL AND quant IS NULL AND layer IS NULL),
chosen AS MATERIALIZED (
    SELECT CASE
        WHEN count(s.textset_id) = 1 THEN first(s.textset_id)
        WHEN count(s.textset_id) = 0 AND textset_name IS NULL THEN error(format(
            'no checkpoints of {} in the atlas (a run is the variants of one family, size and '
            || 'seed with a step, no quant, no layer); runs with checkpoints: {}',
            run_label(run_family, run_size, run_seed), coalesce(first(r.known), 'none')))
        WHEN count(s.textset_id) = 0 THEN error(format(
            'no checkpoints of {} on text set ''{}''; runs with checkpoints: {}',
            run_label(run_family, run_size, run_seed), textset_name,
            coalesce(first(r.known), 'none')))
        ELSE error(format(
            'the checkpoints of {} are on {} text sets ({}): name one with textset_name := ''…''',
            run_label(run_family, run_size, run_seed), count(s.textset_id),
            string_agg(s.set_name, ', ' ORDER BY s.set_name)))
    END AS textset_id
    FROM runs r LEFT JOIN sets s ON true),
picked AS MATERIALIZED (  -- the run's rows first, then only their parts (as variant_vectors)
    SELECT run.key, run.step, v.vid, v.textset_id, v.loglik_mean
    FROM run JOIN vector_rows v ON v.key = run.key JOIN chosen c ON v.textset_id = c.textset_id),
lists AS (
    SELECT pk.vid, joined_parts(p.part, p.loglik, t.n_texts) AS loglik
    FROM picked pk JOIN vector_parts p USING (vid) JOIN textsets t USING (textset_id)
    GROUP BY pk.vid)
SELECT row_number() OVER (ORDER BY pk.step, pk.key) AS i, pk.key, pk.step, pk.textset_id,
       s.set_name AS textset, s.mean_bytes,
       centred_loglik(l.loglik, pk.loglik_mean) AS loglik_centred, w.sketch,
       weight_sketch_settings(w) AS sketch_settings
FROM picked pk
JOIN lists l USING (vid)
JOIN sets s ON s.textset_id = pk.textset_id
LEFT JOIN weight_sketches w ON w.key = pk.key;

-- Consecutive checkpoints of a run: KL(p_step, p_next_step) in bits/byte with its SE. Every
-- checkpoint is a row, in step order; the last has NULL next_key, next_step, kl and se.
CREATE OR REPLACE MACRO trajectory(run_family, run_size, run_seed, textset_name := NULL)
AS TABLE
WITH cp AS MATERIALIZED (
    SELECT i, key, step, mean_bytes, loglik_centred
    FROM run_checkpoints(run_family, run_size, run_seed, textset_name := textset_name)),
pairs AS MATERIALIZED (
    SELECT a.i, b.key AS next_key, b.step AS next_step, a.mean_bytes,
           kl_centred(a.loglik_centred, b.loglik_centred, a.mean_bytes) AS kl,
           a.loglik_centred AS c_a, b.loglik_centred AS c_b
    FROM cp a JOIN cp b ON b.i = a.i + 1),
diffs AS (SELECT i, unnest(c_a) - unnest(c_b) AS d FROM pairs),
-- kl_se_bpb's delta method, with the moments as aggregates over the unnested differences: a
-- list_transform lambda per moment costs ~15× more (1.7 s against 0.1 s for 153 pairs of 10k)
errors AS (
    SELECT i, avg(d) AS r1, avg(d * d) AS r2, avg(d * d * d) AS r3, avg(d * d * d * d) AS r4,
           count(*) AS n
    FROM diffs GROUP BY i)
SELECT cp.key, cp.step, p.next_key, p.next_step, p.kl,
       delta_se(e.r1, e.r2, e.r3, e.r4, e.n, cp.mean_bytes) AS se
FROM cp LEFT JOIN pairs p ON p.i = cp.i LEFT JOIN errors e ON e.i = cp.i
ORDER BY cp.i;

-- The points behind the diffusion fits: for each start t0 with `lags` later checkpoints (only
-- start step `start_step`, unless NULL), the next `lags` checkpoints at lag = step − t0, with
-- d_q = KL_bpb(p_t0, p_step) and d_w = ‖W_step − W_t0‖² (sketch estimate; NULL without sketches).
CREATE OR REPLACE MACRO diffusion_points(run_family, run_size, run_seed, start_step, lags := 10,
                                         textset_name := NULL, min_t0 := NULL)
AS TABLE
WITH cp AS MATERIALIZED (
    SELECT * FROM run_checkpoints(run_family, run_size, run_seed, textset_name := textset_name)),
last AS (SELECT max(i) AS k FROM cp),
starts AS (
    SELECT cp.i, cp.step FROM cp, last
    WHERE cp.i + lags <= last.k AND (start_step IS NULL OR cp.step = start_step)
      AND (min_t0 IS NULL OR cp.step >= min_t0))
SELECT s.step AS t0, b.step, b.step - s.step AS lag,
       kl_centred(a.loglik_centred, b.loglik_centred, a.mean_bytes) AS d_q,
       CASE
           WHEN a.sketch IS NULL OR b.sketch IS NULL THEN NULL
           WHEN a.sketch_settings <> b.sketch_settings THEN error(format(
               'weight sketches of {} and {} are not comparable ({} vs {}): weight distances '
               || 'need the same architecture, size and sketch settings',
               a.key, b.key, a.sketch_settings, b.sketch_settings))
           ELSE pow(list_distance(a.sketch, b.sketch), 2)
       END AS d_w
FROM starts s
CROSS JOIN range(1, lags + 1) offsets(k)   -- an equality join: 2× faster than a range join
JOIN cp a ON a.i = s.i
JOIN cp b ON b.i = s.i + offsets.k
ORDER BY s.i, b.i;

-- Per start t0: the exponents c_q, c_w (OLS slopes of ln d on ln lag), their R², the number of
-- positive points used, and alpha = c_q / c_w. Equal to atlas.analysis.diffusion's per-start fits
-- (DiffusionResult.per_t0; no bootstrap here).
CREATE OR REPLACE MACRO diffusion_fit(run_family, run_size, run_seed, start_step, lags := 10,
                                      textset_name := NULL, min_t0 := NULL)
AS TABLE
WITH points AS (
    SELECT t0,
           ln(CASE WHEN lag > 0 THEN lag END) AS x,
           ln(CASE WHEN isfinite(d_q) AND d_q > 0 THEN d_q END) AS y_q,
           ln(CASE WHEN isfinite(d_w) AND d_w > 0 THEN d_w END) AS y_w
    FROM diffusion_points(run_family, run_size, run_seed, start_step, lags := lags,
                          textset_name := textset_name, min_t0 := min_t0)),
fits AS (
    SELECT t0,
           regr_slope(y_q, x) AS slope_q, regr_r2(y_q, x) AS fit_r2_q, regr_count(y_q, x) AS n_q,
           regr_slope(y_w, x) AS slope_w, regr_r2(y_w, x) AS fit_r2_w, regr_count(y_w, x) AS n_w
    FROM points GROUP BY t0),
kept AS (
    SELECT t0,
           CASE WHEN n_q >= 3 THEN slope_q END AS c_q, CASE WHEN n_q >= 3 THEN fit_r2_q END AS r2_q,
           n_q,
           CASE WHEN n_w >= 3 THEN slope_w END AS c_w, CASE WHEN n_w >= 3 THEN fit_r2_w END AS r2_w,
           n_w
    FROM fits)
SELECT t0, c_q, r2_q, n_q, c_w, r2_w, n_w, c_q / nullif(c_w, 0) AS alpha
FROM kept
ORDER BY t0;

-- Diffusion fits as computed by atlas.analysis.diffusion (bootstrap intervals included), stored
-- by `atlas diffusion` with the window and bootstrap settings they were made with; one row per
-- (run, text set, window, t0, bootstrap draws), replaced when refitted.
CREATE TABLE IF NOT EXISTS diffusion_fits (
    fit_id     VARCHAR PRIMARY KEY,        -- hash of the identifying columns below
    family     VARCHAR NOT NULL,
    size       VARCHAR NOT NULL,
    seed       INTEGER,
    textset    VARCHAR NOT NULL,
    lags       INTEGER NOT NULL,           -- the window
    t0         DOUBLE,                     -- NULL: every start with a full window
    n_boot     INTEGER NOT NULL,
    ci_level   DOUBLE NOT NULL,
    c_q        DOUBLE, c_q_low DOUBLE, c_q_high DOUBLE,
    c_w        DOUBLE, c_w_low DOUBLE, c_w_high DOUBLE,
    alpha      DOUBLE, alpha_low DOUBLE, alpha_high DOUBLE,
    result     JSON NOT NULL,              -- DiffusionResult.to_dict(): per-t0 rows, notes
    fitted_at  TIMESTAMP DEFAULT current_timestamp
);
-- the run's quant (NULL: unquantized), a column added after the first atlases were written
ALTER TABLE diffusion_fits ADD COLUMN IF NOT EXISTS quant VARCHAR;
