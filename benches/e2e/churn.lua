-- Connection churn: every event opens a connection, runs one query and
-- closes it (COM_QUIT), so events per second are connections per second.
function thread_init()
   drv = sysbench.sql.driver()
end

function event()
   local con = drv:connect()
   con:query("SELECT 1")
   con:disconnect()
end
