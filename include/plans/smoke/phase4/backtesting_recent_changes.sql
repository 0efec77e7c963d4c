-- Recent changes panel: the view of the latest 20 configuration changes with the
-- configuration's current minimum ROI and state, plus the standardization audit count.
SELECT r.changed_at, r.strategy_name, r.change_type,
       coalesce(r.changed_by, 'unknown') AS changed_by,
       c.min_roi, c.is_active,
       (SELECT count(*) FROM {{backtesting.standardization_audit_log}} AS a
         WHERE a.table_name = 'strategy_config_history') AS audit_entries
  FROM {{backtesting.recent_config_changes}} AS r
  LEFT JOIN {{backtesting.strategy_configurations}} AS c ON c.id = r.config_id
 ORDER BY r.changed_at DESC, r.id DESC;
