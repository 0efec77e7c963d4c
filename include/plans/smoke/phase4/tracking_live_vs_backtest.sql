-- Strategies configured both live (tracking) and in backtests, side by side: both
-- sources now share one table, so each must still see only its own rows.
SELECT t.strategy_name, t.id AS live_config, b.id AS backtest_config,
       t.is_active AS live_active, b.is_active AS backtest_active, b.min_roi,
       t.config->>'min_confidence' AS live_min_confidence,
       b.config->>'min_confidence' AS backtest_min_confidence
  FROM {{tracking.active_strategy_configs}} AS t
  JOIN {{backtesting.strategy_configurations}} AS b ON b.strategy_name = t.strategy_name
 ORDER BY t.strategy_name, t.id, b.id;
