-- Orchestrator queue: triggers not yet processed or raised since August 5th, with the
-- thresholds of their strategy family, oldest first.
SELECT t.id, t.strategy_name, t.trigger_type, t.trigger_reason, t.roi_at_trigger, t.processed,
       t.created_at, th.metric, th.threshold, th."limit"
  FROM {{backtesting.orchestrator_update_triggers}} AS t
  LEFT JOIN {{backtesting.threshold_configurations}} AS th
         ON t.strategy_name LIKE th.strategy_name || '%'
 WHERE NOT t.processed OR t.created_at >= timestamptz '2024-08-05 00:00:00+00'
 ORDER BY t.created_at, t.id, th.metric;
