DROP TABLE sandbox_events;
DROP TABLE port_mappings;
DROP TABLE sandboxes;
