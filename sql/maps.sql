-- Maps (method.md §6): 2-D coordinates of a chosen set of models, fitted by atlas.analysis.maps
-- (PCA, t-SNE or UMAP of the scaled double-centred q̃) and stored with what they were fitted on.
-- A map is derived: refitting it under the same name replaces it (and all of its points).
--
--   maps                     one row per stored map: method, parameters, model set, notes
--   map_points(name)         table (key, family, size, seed, step, x, y) of one map, by key

CREATE TABLE IF NOT EXISTS maps (
    name        VARCHAR PRIMARY KEY,
    method      VARCHAR NOT NULL,           -- pca | tsne | umap
    params      JSON    NOT NULL,           -- every parameter of the fit as run (library version)
    textset     VARCHAR NOT NULL,           -- text-set name the vectors were on
    model_where VARCHAR,                    -- the SQL condition over model_variants, if any
    n_models    INTEGER NOT NULL,
    keys_hash   VARCHAR NOT NULL,           -- SHA-256 of the sorted keys, one per line
    notes       VARCHAR,                    -- e.g. a perplexity clamped for a small model set
    stats       JSON,                       -- fit outcome: explained variance, final KL, …
    created_at  TIMESTAMP DEFAULT current_timestamp
);

-- The points themselves (named so that the macro below can be map_points).
CREATE TABLE IF NOT EXISTS map_coordinates (
    map_name VARCHAR NOT NULL,              -- a maps.name
    key      VARCHAR NOT NULL,              -- a models.key
    x        DOUBLE  NOT NULL,
    y        DOUBLE  NOT NULL,
    PRIMARY KEY (map_name, key)
);

-- The points of one map with the key columns of their variants; an unknown name is an error
-- that lists the stored maps (a plain filter would return nothing, silently).
CREATE OR REPLACE MACRO map_points(wanted_map) AS TABLE
SELECT c.key, v.family, v.size, v.seed, v.step, c.x, c.y
FROM map_coordinates c LEFT JOIN model_variants v ON v.key = c.key
WHERE c.map_name = wanted_map
  AND (SELECT CASE WHEN count(*) = 0 THEN error(format(
          'no map named ''{}''; stored maps: {}', wanted_map,
          coalesce((SELECT string_agg(s.name, ', ' ORDER BY s.name) FROM maps s), 'none')))
       ELSE true END
       FROM maps m WHERE m.name = wanted_map)
ORDER BY c.key;
