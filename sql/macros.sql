-- LM Atlas SQL surface: views and macros persisted in the .duckdb file, so any DuckDB client
-- (the duckdb CLI, Harlequin, Python) can query the atlas with no atlas code imported.
--
--   kl(key_a, key_b [, textset] [, view := NAME])   KL estimate in bits/byte on the text set
--                                       both share (through a stored view: on the view's set)
--   kl_se(key_a, key_b [, textset] [, view := NAME])  its delta-method standard error
--   kl_bpb(vec_a, vec_b, mean_bytes)    KL on raw vectors: Var(a − b) / (2 B̄ ln 2)
--   kl_se_bpb(vec_a, vec_b, mean_bytes) its standard error
--   nearest(key, k [, textset] [, view := NAME])  table (key, kl, se, textset), nearest first
--   nearest_raw(key, k, textset), nearest_viewed(key, k, textset, view)  its two halves
--   apply_view(loglik, view)            (views.sql) a vector through a stored view, and its B̄
--   centred_loglik(loglik, mean)        ℓ − mean(ℓ) as DOUBLE[] (the file stores only ℓ)
--   resolve_key(text)                   canonical key of a key or unambiguous shorthand
--   listed_key_matches(key, keys)       the keys of a list (not stored yet) a key or shorthand names
--   model_variants, loglik_vectors      public views (stable columns)
--   vectors                             one row per stored vector, ℓ as one list (FLOAT[])
--   variant_vectors(key)                table (textset_id, loglik_mean, loglik) of one variant

-- ℓ whole again from its fixed-size parts (schema.sql: vector_parts), the padding cut off: an
-- aggregate over the parts of one vector. DuckDB builds such lists at ~1 ms per 10,000 values,
-- so a query that joins back many vectors is slow: bulk reads go to vector_parts directly
-- (ORDER BY vid, part; atlas.store.Store.matrix does so).
CREATE OR REPLACE MACRO joined_parts(part, loglik, n_texts) AS
    flatten(list(loglik ORDER BY part))[1:any_value(n_texts)];

-- The vectors of a variant (a canonical key; a subquery is fine: its rows are found first and
-- only their parts are read), one row per text set.
CREATE OR REPLACE MACRO variant_vectors(variant) AS TABLE
WITH picked AS MATERIALIZED (
    SELECT r.vid, r.textset_id, r.loglik_mean, t.n_texts
    FROM vector_rows r JOIN textsets t USING (textset_id) WHERE r.key = variant)
SELECT r.textset_id, any_value(r.loglik_mean) AS loglik_mean,
       joined_parts(p.part, p.loglik, r.n_texts) AS loglik
FROM picked r JOIN vector_parts p USING (vid) GROUP BY r.vid, r.textset_id;

-- One row per stored vector, ℓ as one list (what schema 2 stored). Fast when filtered by a
-- constant key; a filter by a subquery is applied after every vector is joined back (use
-- variant_vectors).
CREATE OR REPLACE VIEW vectors AS
SELECT r.key, r.textset_id, joined_parts(p.part, p.loglik, t.n_texts) AS loglik,
       any_value(r.loglik_mean) AS loglik_mean, any_value(r.n_tokens) AS n_tokens,
       any_value(r.total_tokens) AS total_tokens, any_value(r.n_truncated) AS n_truncated,
       any_value(r.config_id) AS config_id, any_value(r.provenance) AS provenance,
       any_value(r.scored_at) AS scored_at, any_value(r.sketch) AS sketch,
       any_value(r.sketch_resid) AS sketch_resid
FROM vector_rows r JOIN textsets t USING (textset_id) JOIN vector_parts p USING (vid)
GROUP BY r.vid, r.key, r.textset_id;

CREATE OR REPLACE VIEW loglik_vectors AS
SELECT v.key, t.name AS textset, v.loglik, t.mean_bytes
FROM vectors v JOIN textsets t USING (textset_id);

CREATE OR REPLACE MACRO bpb_scale(mean_bytes) AS 1.0 / (2.0 * mean_bytes * ln(2.0));

-- The key grammar, as a struct of strings ('' where a part is absent): atlas.keys.KEY_PATTERN
-- and its group names, written in as this file is applied (atlas.store.read_sql).
CREATE OR REPLACE MACRO parse_key(k) AS regexp_extract(k, {{KEY_PATTERN}}, {{KEY_FIELDS}});

-- Whether the models row m has the fields a parsed key p sets (absent parts are wildcards;
-- a quant of 'none' means unquantized, as atlas.keys.quant_label says).
CREATE OR REPLACE MACRO key_fields_match(p, m) AS
  m.family = p.family AND m.size = p.size
  AND (p.seed = '' OR m.seed = TRY_CAST(p.seed AS INTEGER))
  AND (p.quant = '' OR m.quant = p.quant OR (lower(p.quant) = 'none' AND m.quant IS NULL))
  AND (p.layer = '' OR m.layer = TRY_CAST(p.layer AS INTEGER))
  AND (p.checkpoint = '' OR m.checkpoint = p.checkpoint);

-- Variants matching a key: the verbatim key if stored, else every variant whose fields equal
-- the fields the key sets. The parsed key is empty when the verbatim key is stored, so the
-- field match then joins nothing (filtered after the join, it compared every model:
-- resolve_key took 6.1 ms at 10⁶ variants, now 4.0).
CREATE OR REPLACE MACRO key_matches(k) AS TABLE
WITH exact AS (SELECT key FROM models WHERE key = k),
     parsed AS (SELECT parse_key(k) AS p WHERE NOT EXISTS (SELECT 1 FROM exact))
SELECT key FROM exact
UNION ALL
SELECT m.key FROM models m, parsed WHERE key_fields_match(p, m);

-- The keys of a list (canonical keys not stored yet: those an import or a bulk manifest writes
-- together) that a key names, by the same field match on their parsed fields typed as models
-- has them: atlas.store resolves a parent written in the same operation with it, so the
-- shorthand rule has no second copy in Python.
CREATE OR REPLACE MACRO listed_key_matches(k, keys) AS TABLE
WITH parsed AS (SELECT parse_key(k) AS p),
     listed AS (SELECT key, parse_key(key) AS f FROM unnest(keys) AS t(key))
SELECT key FROM listed, parsed
WHERE key_fields_match(p, {'family': f.family, 'size': f.size,
                           'seed': TRY_CAST(nullif(f.seed, '') AS INTEGER),
                           'quant': nullif(f.quant, ''),
                           'layer': TRY_CAST(nullif(f.layer, '') AS INTEGER),
                           'checkpoint': nullif(f.checkpoint, '')});

-- parent is the stored key the recorded parent names: a parent is checked when written, but an
-- atlas written by an older version may hold a shorthand (resolved here) or a key that was never
-- stored (NULL here, kept in models.parent), so kl(key, parent) works on every row.
CREATE OR REPLACE VIEW model_variants AS
WITH dangling AS (
    SELECT DISTINCT parent, parse_key(parent) AS p FROM models
    WHERE parent IS NOT NULL AND parent NOT IN (SELECT key FROM models)),
resolved AS (
    SELECT d.parent, CASE WHEN count(m.key) = 1 THEN first(m.key) END AS key
    FROM dangling d LEFT JOIN models m ON key_fields_match(d.p, m)
    GROUP BY d.parent)
SELECT m.key, m.family, m.size, m.n_params, m.seed, m.quant, m.layer, m.checkpoint, m.step,
       CASE WHEN r.parent IS NULL THEN m.parent ELSE r.key END AS parent, m.source
FROM models m LEFT JOIN resolved r ON r.parent = m.parent;

CREATE OR REPLACE MACRO resolve_key(k) AS (
    SELECT CASE
        WHEN count(*) = 1 THEN first(key)
        WHEN count(*) = 0 THEN error(format(
            'unknown model key ''{}'': no stored variant matches (list them with SELECT key FROM model_variants)', k))
        ELSE error(format('ambiguous model key ''{}'' matches {} variants: {}; give more of the key',
                          k, count(*), string_agg(key, ', ' ORDER BY key)))
    END
    FROM key_matches(k));

-- a − b − shift as DOUBLE (a shift near the mean difference keeps higher moments well scaled);
-- vectors of different lengths are not on the same text set.
CREATE OR REPLACE MACRO loglik_diff(vec_a, vec_b, shift) AS CASE
    WHEN len(vec_a) = len(vec_b)
    THEN list_transform(list_zip(vec_a, vec_b), lambda p: p[1]::DOUBLE - p[2]::DOUBLE - shift)
    ELSE error(format('vectors of different lengths ({} vs {}): not on the same text set',
                      len(vec_a), len(vec_b)))
END;

-- KL from the differences d = a − b (DOUBLE[]): Var(d) / (2 B̄ ln 2).
CREATE OR REPLACE MACRO diff_kl(d, mean_bytes) AS
    list_aggregate(d, 'var_pop') * bpb_scale(mean_bytes);

CREATE OR REPLACE MACRO kl_bpb(vec_a, vec_b, mean_bytes) AS
    diff_kl(loglik_diff(vec_a, vec_b, 0), mean_bytes);

-- The variance m2 from raw moments r1, r2 about a shift (close to the mean: no cancellation).
CREATE OR REPLACE MACRO shifted_variance(r1, r2) AS r2 - r1 * r1;

-- Delta method: SE = √((m4 − m2²)/N) / (2 B̄ ln 2), central moments from shifted raw moments.
CREATE OR REPLACE MACRO delta_se(r1, r2, r3, r4, n, mean_bytes) AS
    sqrt(greatest((r4 - 4 * r1 * r3 + 6 * r1 * r1 * r2 - 3 * pow(r1, 4))
                  - pow(shifted_variance(r1, r2), 2), 0) / n) * bpb_scale(mean_bytes);

-- The same from the power sums Σx … Σx⁴ of n differences x about a shift.
CREATE OR REPLACE MACRO sums_se(s1, s2, s3, s4, n, mean_bytes) AS
    delta_se(s1 / n, s2 / n, s3 / n, s4 / n, n, mean_bytes);

CREATE OR REPLACE MACRO squares(x) AS list_transform(x, lambda t: t * t);

-- The power sums of a DOUBLE[] x as inner products with x and x²: one lambda for x² where a
-- lambda per power (pow(x − shift, k)) took 9.5 of a kl_se's 23 ms at 10,000 texts. x and x²
-- are bound once in a subquery: a macro argument is expanded wherever it is named, and x named
-- six times computed a − b six times (kl_se_bpb per row over 200 pairs of 10,000: 1.0–1.25 s,
-- bound once 0.12–0.15 s).
CREATE OR REPLACE MACRO list_sums_se(x, n, mean_bytes) AS (
    SELECT sums_se(list_sum(d), list_inner_product(d, d), list_inner_product(d2, d),
                   list_inner_product(d2, d2), n, mean_bytes)
    FROM (SELECT d, squares(d) AS d2 FROM (SELECT x AS d)));

CREATE OR REPLACE MACRO kl_se_bpb(vec_a, vec_b, mean_bytes) AS list_sums_se(
    loglik_diff(vec_a, vec_b, vec_a[1]::DOUBLE - vec_b[1]::DOUBLE), len(vec_a), mean_bytes);

-- KL from stored centred vectors: ‖c_a − c_b‖² / N, vectorised (list_distance).
CREATE OR REPLACE MACRO kl_centred(c_a, c_b, mean_bytes) AS
    pow(list_distance(c_a, c_b), 2) / len(c_a) * bpb_scale(mean_bytes);

-- c = ℓ − mean(ℓ) in DOUBLE, from the stored float32 ℓ (the file keeps no centred copy).
CREATE OR REPLACE MACRO centred_loglik(loglik, loglik_mean) AS
    list_transform(loglik, lambda x: x::DOUBLE - loglik_mean);

-- The vectors of two variants (canonical keys) on each text set they share (optionally one
-- named set). Atlas.kl resolves its keys first and calls this: resolve_key's planning was ~40%
-- of a kl's CPU at 10⁶ variants.
CREATE OR REPLACE MACRO canonical_shared_vectors(key_a, key_b, textset_name := NULL) AS TABLE
WITH va AS MATERIALIZED (SELECT textset_id, centred_loglik(loglik, loglik_mean) AS c
                         FROM variant_vectors(key_a)),
     vb AS MATERIALIZED (SELECT textset_id, centred_loglik(loglik, loglik_mean) AS c
                         FROM variant_vectors(key_b))
SELECT t.name AS textset, t.mean_bytes, va.c AS c_a, vb.c AS c_b
FROM va JOIN vb USING (textset_id) JOIN textsets t USING (textset_id)
WHERE textset_name IS NULL OR t.name = textset_name;

CREATE OR REPLACE MACRO no_single_textset(key_a, key_b, n, textset_name := NULL) AS CASE
    WHEN n = 0 AND textset_name IS NOT NULL
         AND NOT EXISTS (SELECT 1 FROM textsets WHERE name = textset_name) THEN error(format(
        'no text set named ''{}'' for {} and {}; stored text sets: {}', textset_name, key_a, key_b,
        coalesce((SELECT string_agg(name, ', ' ORDER BY name) FROM textsets), 'none')))
    WHEN n = 0 THEN error(format(
        'no text set holds vectors of both {} and {}: score them on the same text set', key_a, key_b))
    ELSE error(format(
        '{} and {} share {} text sets: name one, e.g. kl(''{}'', ''{}'', ''TEXTSET'')',
        key_a, key_b, n, key_a, key_b))
END;

-- The vectors of two variants (canonical keys) through a stored view (views.sql), on the
-- view's text set, centred as canonical_shared_vectors gives them: one row, or an error naming
-- the variant that has no vector there; no row without a view.
CREATE OR REPLACE MACRO viewed_vectors(key_a, key_b, textset_name, view_name) AS TABLE
WITH w AS NOT MATERIALIZED (  -- without a view this plans to nothing: no vector is read
    SELECT * FROM view_of(view_name, textset_name := textset_name) WHERE view_name IS NOT NULL),
     pair AS (SELECT w.*, a.loglik AS l_a, b.loglik AS l_b
              FROM w LEFT JOIN variant_vectors(key_a) a USING (textset_id)
              LEFT JOIN variant_vectors(key_b) b USING (textset_id)),
     viewed AS (SELECT textset, mean_bytes, view_loglik(l_a, threshold, keep) AS v_a,
                       view_loglik(l_b, threshold, keep) AS v_b
                FROM pair WHERE CASE WHEN l_a IS NULL OR l_b IS NULL THEN error(format(
                    '{} has no vector on text set ''{}'', the text set of view ''{}''; score it '
                    || 'on that set first', CASE WHEN l_a IS NULL THEN key_a ELSE key_b END,
                    textset, name))
                    ELSE true END)
SELECT textset, mean_bytes, centred_loglik(v_a, list_avg(v_a)) AS c_a,
       centred_loglik(v_b, list_avg(v_b)) AS c_b
FROM viewed;

-- The vectors of two keys or shorthands: canonical_shared_vectors without a view,
-- viewed_vectors with one. Both branches are bound whichever runs, so each key is resolved once
-- here and goes to both canonical (resolve_key bound six times was a third of a kl's planning
-- at 10⁶ variants).
CREATE OR REPLACE MACRO pair_vectors(key_a, key_b, textset_name, view_name) AS TABLE
WITH keys AS (SELECT resolve_key(key_a) AS a, resolve_key(key_b) AS b)
SELECT * FROM canonical_shared_vectors((SELECT a FROM keys), (SELECT b FROM keys), textset_name)
WHERE view_name IS NULL
UNION ALL
SELECT * FROM viewed_vectors((SELECT a FROM keys), (SELECT b FROM keys), textset_name, view_name);

CREATE OR REPLACE MACRO kl(key_a, key_b, textset_name := NULL, view := NULL) AS (
    SELECT CASE WHEN count(*) = 1 THEN first(kl_centred(c_a, c_b, mean_bytes))
                ELSE no_single_textset(key_a, key_b, count(*), textset_name := textset_name) END
    FROM pair_vectors(key_a, key_b, textset_name, view));

CREATE OR REPLACE MACRO kl_se(key_a, key_b, textset_name := NULL, view := NULL) AS (
    SELECT CASE WHEN count(*) = 1 THEN first(kl_se_bpb(c_a, c_b, mean_bytes))
                ELSE no_single_textset(key_a, key_b, count(*), textset_name := textset_name) END
    FROM pair_vectors(key_a, key_b, textset_name, view));

-- ‖a − b‖² of two parts of vectors (vector_parts.loglik), in DOUBLE.
CREATE OR REPLACE MACRO part_sq_distance(a, b) AS
    pow(array_distance(a::DOUBLE[{{LOGLIK_PART}}], b::DOUBLE[{{LOGLIK_PART}}]), 2);

-- nearest's k, checked: a whole number ≥ 0 (unchecked, NULL meant no limit and returned 32 rows
-- or every one, -1 failed with DuckDB's words about LIMIT and 2.5 gave 3). nearest checks it as
-- it builds its query; nearest_raw and nearest_viewed as they find the query's vector (their
-- LIMITs must stay plain constants for a lateral join, so a negative k meets DuckDB's LIMIT
-- check there first).
CREATE OR REPLACE MACRO neighbours(k) AS CASE
    WHEN k >= 0 AND k = trunc(k) THEN k
    ELSE error(format('nearest needs k, how many neighbours, as a whole number ≥ 0 (got {})',
                      coalesce(k::VARCHAR, 'NULL')))
END;

-- nearest through a stored view (views.sql): an exact scan of every vector of the view's text
-- set (the sketches describe the raw vectors, so nearest's sketch path is for raw vectors only),
-- a part at a time. With d = clip(ℓ_q) − clip(ℓ_v) over a part's kept texts, Σd and Σd² are the
-- part's whole sums (list_sum, list_distance: no lambda but the clip's, none without a clip)
-- less its dropped texts' (list_select; the padding is 0 on both sides). The vectors are ranked
-- by Σd² − (Σd)²/n (n kept texts) and the best k + 2 joined back, viewed and measured exactly.
-- Joining every vector back and viewing it whole first took 3.1–3.9 s at a 4.1 GB peak for
-- 10⁴ × 10⁴ (now 1.2 s at 0.55 GB). No row without a view.
CREATE OR REPLACE MACRO nearest_viewed(query_key, k, textset_name, view_name) AS TABLE
WITH w AS NOT MATERIALIZED (  -- without a view this plans to nothing: no key is even resolved
    SELECT * FROM view_of(view_name, textset_name := textset_name) WHERE view_name IS NOT NULL),
keyed AS (SELECT w.*, resolve_key(query_key) AS found FROM w WHERE neighbours(k) IS NOT NULL),
query AS MATERIALIZED (
    SELECT w.found AS key, w.textset, w.textset_id, w.mean_bytes, w.threshold, w.keep,
           len(w.keep) AS n_texts, len(list_filter(w.keep, lambda kept: kept)) AS n_kept,
           CASE WHEN v.vid IS NULL THEN error(format(
               '{} has no vector on text set ''{}'', the text set of view ''{}''; score it on '
               || 'that set first', w.found, w.textset, w.name)) ELSE v.vid END AS vid
    FROM keyed w LEFT JOIN vector_rows v ON v.key = w.found AND v.textset_id = w.textset_id),
query_parts AS MATERIALIZED (  -- the query's parts clipped, with their dropped texts' places
    SELECT part, ql, di, list_sum(ql) - coalesce(list_sum(list_select(ql, di)), 0) AS q1
    FROM (SELECT p.part, view_clip(p.loglik, q.threshold) AS ql,
                 list_filter(range(1, {{LOGLIK_PART}} + 1), lambda i:
                             NOT coalesce(q.keep[p.part * {{LOGLIK_PART}} + i], true)) AS di
          FROM query q JOIN vector_parts p USING (vid))),
scanned AS (  -- Σd and Σd² over a part's kept texts: over all of it, less its dropped ones
    SELECT vid, sum(q1 - list_sum(vl) + coalesce(list_sum(list_select(vl, di)), 0)) AS s1,
           sum(pow(list_distance(ql, vl), 2) - pow(list_distance(list_select(ql, di),
                                                                list_select(vl, di)), 2)) AS s2
    FROM (SELECT p.vid, qp.ql, qp.di, qp.q1, view_clip(p.loglik, q.threshold) AS vl
          FROM query q JOIN vector_rows v ON v.textset_id = q.textset_id AND v.vid <> q.vid
          JOIN vector_parts p ON p.vid = v.vid JOIN query_parts qp ON qp.part = p.part)
    GROUP BY vid),
ranked AS MATERIALIZED (
    SELECT s.vid, v.key FROM scanned s JOIN vector_rows v USING (vid), query q
    ORDER BY s.s2 - s.s1 * s.s1 / q.n_kept, v.key
    LIMIT k + 2),  -- exact values below may reorder near-ties: keep a margin
joined AS (  -- the query's vector and theirs whole again (grouped by vid, not by the mask)
    SELECT j.key, view_loglik(j.loglik, q.threshold, q.keep) AS l
    FROM (SELECT any_value(r.key) AS key, joined_parts(p.part, p.loglik, q.n_texts) AS loglik
          FROM (SELECT vid, key FROM ranked UNION ALL SELECT vid, NULL FROM query) r
          JOIN vector_parts p USING (vid), query q
          GROUP BY r.vid) j, query q)
SELECT v.key, kl_bpb(qv.l, v.l, q.mean_bytes) AS kl, kl_se_bpb(qv.l, v.l, q.mean_bytes) AS se,
       q.textset
FROM joined v, joined qv, query q
WHERE v.key IS NOT NULL AND qv.key IS NULL
ORDER BY kl, v.key
LIMIT k;

-- ‖c_q − c_v‖² / N in bits/byte (KL's units, comparable across text sets) from the summed
-- squared raw differences over the parts (sq) and the two means.
CREATE OR REPLACE MACRO centred_bpb(sq, n_texts, m_q, m_v, mean_bytes) AS
    (sq - n_texts * pow(m_q - m_v, 2)) / n_texts * bpb_scale(mean_bytes);

-- How far the computed lower bound may exceed the true ‖c_q − c_v‖² through rounding, given
-- the two vectors' squared norms n = ‖s‖² + r² (= ‖x‖², x = c − μ, μ the basis mean; n_v is
-- bounded by (√near + ‖s_q‖)² + r_v², as ‖s_v‖ ≤ ‖s_v − s_q‖ + ‖s_q‖). Per unit of n_q + n_v,
-- u = 2⁻²⁴: the float32 sketches (≤ u‖s‖ each) move ‖s_q − s_v‖² by ≤ 4.02u; array_distance
-- sums in float32 (≤ 70u relative on near ≤ 2(n_q + n_v): 140u); together < 10⁻⁵. The residual
-- r = √(‖x‖² − ‖s‖²) is a float64 difference off by ≤ γ‖x‖², γ = (N + 65)·2⁻⁵³ (N texts), so
-- r is off by ≤ √γ‖x‖ and (r_q − r_v)² by ≤ 4√γ. Terms of order 2⁻⁵³ (the float64 sketch,
-- centring, the exact sums) are left out: the 10⁻⁵ has ~15% to spare for them.
-- dist = ‖s_q − s_v‖ (near = dist²); products, not pow(): pow was a fifth of the sketch pass.
CREATE OR REPLACE MACRO sketch_slack(n_q, dist, s_q_norm, r_v, n_texts) AS
    (n_q + (dist + s_q_norm) * (dist + s_q_norm) + r_v * r_v)
    * (1e-5 + 4 * sqrt((n_texts + 65) * pow(2, -53)));

-- The least KL a vector may have, from its sketch bound `least` (KL units) raised by the
-- residual sketches: ‖e_q − e_v‖² ≥ RESID_BOUND · ‖g_q − g_v‖² but for a chance of
-- RESID_FAILURE per pair (atlas.sketches), in place of the (r_q − r_v)² the sketch bound counts.
-- gd = ‖g_q − g_v‖ as computed; the float32 g and float32 array_distance move gd² by < 10⁻⁵ of
-- (‖g_q‖ + ‖g_v‖)² ≤ (gd + 2‖g_q‖)², subtracted. No residual sketch: the sketch bound.
CREATE OR REPLACE MACRO residual_least(least, gd, r_q, r_v, g_q_norm, kl_per_sq) AS
    least + coalesce(greatest({{RESID_BOUND}} * gd * gd - (r_v - r_q) * (r_v - r_q), 0)
                     - {{RESID_BOUND}} * (gd + 2 * g_q_norm) * (gd + 2 * g_q_norm) * 1e-5, 0)
            * kl_per_sq;

-- nearest without a view: the k variants nearest to a key by KL on each text set of the key
-- (one named set if given), exactly the brute-force top k but for a chance of at most
-- k · RESID_FAILURE = 10⁻¹¹ (k = 10) over the text set's random residual projection, for any
-- vectors not chosen knowing it (none on sets without residual sketches).
-- The sketch pass reads every vector's sketch (64 floats): `least`, a lower bound of its KL
-- (sketch_slack, less the rounding), and `guess` = ‖s_q − s_v‖² + r_q² + r_v², its KL were its
-- residual unrelated to the query's. The k-th smallest guess (+1 %) is a threshold t where the
-- top k probably ends: every vector whose bound, raised by its residual sketch (residual_least,
-- read only for the vectors under t by the sketch bound), is under t is measured exactly from
-- its parts (chosen; vectors without a sketch always). With a_k the k-th exact KL among them
-- (of all the key's text sets, as the top k is), the certificate: a vector not chosen whose
-- bound is under a_k could be nearer, so it is measured too (missed: empty when a_k ≤ t, as
-- on every bench_scale query; a vector may have any KL above its bound, so t is only a guess).
-- The top k is taken over both: the brute-force top k. One pass over the parts in the common
-- case: the last version's two (candidates by two sketch orderings, then the certificate's
-- extras) read 10²–10⁴ more vectors a query on bench_scale's noise-dominated atlases.
-- The chosen pass reads only its vectors' parts (a join on vid the scan filters on) and ranks
-- them by ‖c_q − c_v‖² summed over parts; the best k + 2 and the missed ones are measured
-- exactly from their parts: the moments of x = ℓ_q − ℓ_v − (m_q − m_v), shifted by the
-- difference of the means so that nothing cancels (joining them back into lists first was
-- 12 ms of a 60 ms query at 10⁴ × 10⁴; DuckDB's UNNEST was slower still).
CREATE OR REPLACE MACRO nearest_raw(query_key, k, textset_name) AS TABLE
WITH query AS MATERIALIZED (
    SELECT v.textset_id, v.vid, v.loglik_mean AS m_q, v.sketch AS s_q, v.sketch_resid AS r_q,
           v.resid_sketch AS g_q,
           sqrt(array_inner_product(v.sketch::DOUBLE[{{SKETCH_DIM}}], v.sketch::DOUBLE[{{SKETCH_DIM}}])) AS s_q_norm,
           sqrt(array_inner_product(g_q::DOUBLE[{{RESID_DIM}}], g_q::DOUBLE[{{RESID_DIM}}])) AS g_q_norm,
           pow(s_q_norm, 2) + pow(r_q, 2) AS n_q, t.mean_bytes, t.n_texts, t.name AS textset,
           bpb_scale(t.mean_bytes) / t.n_texts AS kl_per_sq
    FROM vector_rows v JOIN textsets t USING (textset_id)
    WHERE v.key = resolve_key(query_key) AND neighbours(k) IS NOT NULL
      AND (textset_name IS NULL OR t.name = textset_name)),
query_parts AS MATERIALIZED (
    SELECT q.textset_id, p.part, p.loglik FROM query q JOIN vector_parts p USING (vid)),
bounds AS MATERIALIZED (  -- a cross product, the other text sets' rows left out by `mine`:
            -- a join on textset_id copied every row's sketch (a third of this pass's CPU)
    SELECT textset_id, vid, mine, (near + r_v * r_v + r_q * r_q) * kl_per_sq AS guess,
           (near + (r_v - r_q) * (r_v - r_q) - sketch_slack(n_q, dist, s_q_norm, r_v, n_texts))
               * kl_per_sq AS least
    FROM (SELECT q.textset_id, v.vid, v.textset_id = q.textset_id AND v.vid <> q.vid AS mine,
                 array_distance(v.sketch, q.s_q)::DOUBLE AS dist, dist * dist AS near,
                 v.sketch_resid AS r_v, q.r_q, q.n_q, q.s_q_norm, q.n_texts, q.kl_per_sq
          FROM query q, vector_rows v)),
threshold AS (  -- the k-th smallest guess; fewer than k guesses: every vector is chosen
    SELECT CASE WHEN count(*) < k THEN 'inf'::DOUBLE ELSE max(guess) * 1.01 END AS t
    FROM (SELECT guess FROM bounds WHERE mine AND guess IS NOT NULL ORDER BY guess LIMIT k)),
refined AS MATERIALIZED (  -- the vectors under t by their sketch bound, the bound raised
    SELECT vid, textset_id, residual_least(least, gd, r_q, r_v, g_q_norm, kl_per_sq) AS least
    FROM (SELECT u.vid, u.textset_id, u.least, v.r_v, q.r_q, q.g_q_norm, q.kl_per_sq,
                 array_distance(v.g_v, q.g_q)::DOUBLE AS gd
          FROM (SELECT vid, textset_id, least FROM bounds
                WHERE mine AND (least IS NULL OR least < (SELECT t FROM threshold))) u
          JOIN (SELECT vid, sketch_resid AS r_v, resid_sketch AS g_v FROM vector_rows) v
              USING (vid)
          JOIN query q USING (textset_id))),
chosen AS MATERIALIZED (
    SELECT vid, textset_id FROM refined WHERE least IS NULL OR least < (SELECT t FROM threshold)),
chosen_parts AS MATERIALIZED (  -- on its own: a join on vid alone is what the scan filters
    SELECT c.vid, c.textset_id, p.part, p.loglik FROM chosen c JOIN vector_parts p USING (vid)),
chosen_sq AS MATERIALIZED (
    SELECT c.vid, c.textset_id, sum(part_sq_distance(c.loglik, qp.loglik)) AS sq
    FROM chosen_parts c JOIN query_parts qp USING (textset_id, part)
    GROUP BY c.vid, c.textset_id),
ranked AS MATERIALIZED (
    SELECT d.vid, d.textset_id, v.key, q.m_q - v.loglik_mean AS shift,
           centred_bpb(d.sq, q.n_texts, q.m_q, v.loglik_mean, q.mean_bytes) AS approx
    FROM chosen_sq d JOIN vector_rows v USING (vid) JOIN query q ON q.textset_id = d.textset_id
    ORDER BY approx, v.key
    LIMIT k + 2),  -- exact values below may reorder near-ties: keep a margin
reach AS (  -- the k-th KL among them (as ranked has it: joining the chosen to their rows
    -- again cost 1.5 ms); fewer than k chosen means every vector is one
    SELECT CASE WHEN count(*) < k THEN 'inf'::DOUBLE ELSE max(approx) END AS a_k
    FROM (SELECT approx FROM ranked ORDER BY approx LIMIT k)),
missed AS MATERIALIZED (  -- the certificate (+10⁻⁶ relative, for near-ties): the vectors not
    -- chosen whose bound, raised where it was, is under a_k. Filtered on the sketch bound
    -- alone first (a sketch bound under a_k is needed for a raised one to be)
    SELECT b.vid, b.textset_id
    FROM (SELECT vid, textset_id, least FROM bounds
          WHERE mine AND least < (SELECT a_k FROM reach) * (1 + 1e-6)) b
    LEFT JOIN refined r USING (vid)
    WHERE coalesce(r.least, b.least) >= (SELECT t FROM threshold)
      AND coalesce(r.least, b.least) < (SELECT a_k FROM reach) * (1 + 1e-6)),
measured AS MATERIALIZED (  -- the best of the chosen and every missed vector, all measured in
    -- the last pass (a pass of its own for the missed cost ~9 ms even when it had none)
    SELECT vid, textset_id, key, shift FROM ranked
    UNION ALL
    SELECT e.vid, e.textset_id, v.key, q.m_q - v.loglik_mean FROM missed e
    JOIN vector_rows v USING (vid) JOIN query q ON q.textset_id = e.textset_id),
shifted AS (  -- x = ℓ_q − ℓ_v − shift a part at a time, the padding cut off. The parts are
    -- read through a semi-join on vid, which the scan filters on (joined on vid and part, the
    -- scan read every part: +76 ms at 10⁴ × 10⁴)
    SELECT r.key, r.textset_id, list_transform(list_zip(qp.loglik, p.loglik),
               lambda z: z[1]::DOUBLE - z[2]::DOUBLE - r.shift)[1:q.n_texts - p.part * {{LOGLIK_PART}}] AS x
    FROM measured r
    JOIN (SELECT * FROM vector_parts WHERE vid IN (SELECT vid FROM measured)) p USING (vid)
    JOIN query_parts qp USING (textset_id, part) JOIN query q USING (textset_id)),
sums AS (  -- Σx, Σx², Σx³, Σx⁴ over the texts, as list_sums_se takes them of one list
    SELECT key, textset_id, sum(list_sum(x)) AS s1, sum(list_inner_product(x, x)) AS s2,
           sum(list_inner_product(x2, x)) AS s3, sum(list_inner_product(x2, x2)) AS s4
    FROM (SELECT *, squares(x) AS x2 FROM shifted)
    GROUP BY key, textset_id)
SELECT s.key, shifted_variance(s.s1 / n_texts, s.s2 / n_texts) * bpb_scale(q.mean_bytes) AS kl,
       sums_se(s.s1, s.s2, s.s3, s.s4, n_texts, q.mean_bytes) AS se, q.textset
FROM sums s JOIN query q USING (textset_id)
ORDER BY kl, s.key
LIMIT k;

-- A value as SQL text: a quoted literal, or NULL.
CREATE OR REPLACE MACRO sql_literal(x) AS
    coalesce(chr(39) || replace(x::VARCHAR, chr(39), chr(39) || chr(39)) || chr(39), 'NULL');

-- The k variants nearest to a key by KL on each text set of the key (one named set if given);
-- through a stored view with view := NAME. A UNION of nearest_raw and nearest_viewed, one of
-- them empty, would bind both: the view's branch was half of the planning (~30 ms of ~60 at
-- 10⁵ vectors). query() binds only the one the call names; its arguments go in as literals,
-- so they must be constants or parameters: per row of a table (a lateral join), call
-- nearest_raw(key, k, textset) or nearest_viewed(key, k, textset, view) instead.
CREATE OR REPLACE MACRO nearest(query_key, k, textset_name := NULL, view := NULL) AS TABLE
SELECT * FROM query(format('SELECT * FROM {}({}, {}::BIGINT, {}{})',
    CASE WHEN view IS NULL THEN 'nearest_raw' ELSE 'nearest_viewed' END,
    sql_literal(query_key), sql_literal(neighbours(k)), sql_literal(textset_name),
    CASE WHEN view IS NULL THEN '' ELSE ', ' || sql_literal(view) END))
ORDER BY kl, key;

-- Weight space (method.md §5): ‖S(a) − S(b)‖², the sketch estimate of ‖W_a − W_b‖², from the
-- stored weight sketches of two variants of the same architecture (atlas.weights).
CREATE OR REPLACE MACRO weight_sketch_settings(s) AS
    format('{}, dim {}, seed {}, layout {}', s.method, s.dim, s.seed, s.layout_hash);

CREATE OR REPLACE MACRO weight_sq_distance(key_a, key_b) AS (
    WITH a AS MATERIALIZED (SELECT * FROM weight_sketches WHERE key = resolve_key(key_a)),
         b AS MATERIALIZED (SELECT * FROM weight_sketches WHERE key = resolve_key(key_b))
    SELECT CASE
        WHEN a.key IS NULL OR b.key IS NULL THEN error(format(
            'no weight sketch stored for {}: weights are sketched at ingest (sketch dim > 0); '
            || 're-ingest the model with --force to add one',
            CASE WHEN a.key IS NULL THEN key_a ELSE key_b END))
        WHEN weight_sketch_settings(a) <> weight_sketch_settings(b) THEN error(format(
            'weight sketches of {} and {} are not comparable ({} vs {}): weight distances need '
            || 'the same architecture, size and sketch settings',
            a.key, b.key, weight_sketch_settings(a), weight_sketch_settings(b)))
        ELSE pow(list_distance(a.sketch, b.sketch), 2)
    END
    FROM (SELECT 1) one LEFT JOIN a ON true LEFT JOIN b ON true);
