-- Strategy admin page: active backtest configurations with a minimum ROI and their
-- change history, highest minimum ROI first.
SELECT c.id, c.strategy_name, c.min_roi, c.config->'markets' AS markets,
       count(h.id) AS changes,
       max(h.changed_at) AS last_change,
       string_agg(DISTINCT h.change_type, ',' ORDER BY h.change_type) AS change_types
  FROM {{backtesting.strategy_configurations}} AS c
  LEFT JOIN {{backtesting.strategy_config_history}} AS h ON h.config_id = c.id
 WHERE c.is_active AND c.min_roi IS NOT NULL
 GROUP BY c.id, c.strategy_name, c.min_roi, c.config
 ORDER BY c.min_roi DESC, c.id;
