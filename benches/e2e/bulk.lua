-- Bulk transfer: every event reads the whole `bulk` table (large rows) over
-- one long-lived connection; the runner turns events into megabytes.
function thread_init()
   drv = sysbench.sql.driver()
   con = drv:connect()
end

function event()
   con:query("SELECT b FROM bulk")
end

function thread_done()
   con:disconnect()
end
