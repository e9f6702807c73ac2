# frozen_string_literal: true
#
# The lab's app writer through ActiveRecord (hcbpg.lab.app_load starts it; issue 28).  It connects the way HCB's
# Rails app does: DATABASE_URL in the environment, resolved by ActiveRecord itself, then handed to the pg gem.
# The URL is read from a 0600 env file (NAME='value' lines, as hcbpg hands them out), never from the command
# line, and set in this process's own environment only.
#
#   ruby ar_load.rb env_file=FILE var=DATABASE_URL log=FILE rate=50 users=1000 mode=write|read pg_async=on|off \
#                   [latency=on|off]
#
# write: INSERT INTO events ... RETURNING id and the server's address, at *rate* a second; after each
# acknowledged commit one line "i ID T_MS SERVER" (T_MS: wall-clock milliseconds at the ack); latency=on adds
# the insert's latency: "i ID T_MS SERVER LATENCY_US" (from sending it to its answer, monotonic clock).
# read:  SELECT the server's address; "r T_MS SERVER" per answer.
# An error: "e T_MS CLASS" (never the message: it names nothing secret, but a log keeps to what it needs),
# then the pool is disconnected and the next try comes 50 ms later on a new connection (libpq walks the host
# list again, target_session_attrs choosing the server).  SIGTERM ends the loop: "stopped" is the last line.
#
# pg_async=off sets PG::Connection.async_api = false: the gem then connects through libpq's blocking
# PQconnectdb, where libpq itself moves to the next host when connect_timeout expires.  The default
# asynchronous connect of pg 1.3 to (at least) 1.4.5 raises "timeout expired" on a first host that drops
# packets and never tries the next one (ruby-pg issue #618).

require "shellwords"

opts = ARGV.to_h { |a| a.split("=", 2) }
env_file = opts.fetch("env_file")
var = opts.fetch("var", "DATABASE_URL")
log_path = opts.fetch("log")
rate = Float(opts.fetch("rate", "50"))
users = Integer(opts.fetch("users", "1000"))
mode = opts.fetch("mode", "write")
abort "ar_load: mode must be write or read" unless %w[write read].include?(mode)
abort "ar_load: rate must be positive" unless rate.positive?
pg_async = opts.fetch("pg_async", "on")
abort "ar_load: pg_async must be on or off" unless %w[on off].include?(pg_async)
latency = opts.fetch("latency", "off")
abort "ar_load: latency must be on or off" unless %w[on off].include?(latency)

url = nil
File.foreach(env_file) do |line|
  name, value = line.chomp.split("=", 2)
  url = Shellwords.split(value).first if name == var && value
end
abort "ar_load: #{env_file} has no #{var}= line" if url.nil? || url.empty?
ENV["DATABASE_URL"] = url

require "active_record"
require "pg"

PG::Connection.async_api = false if pg_async == "off"

ActiveRecord::Base.establish_connection # from DATABASE_URL, through ActiveRecord's own URL resolver

$stop = false
trap("TERM") { $stop = true }
trap("INT") { $stop = true }

log = File.open(log_path, "a", 0o600)
log.sync = true

def now_ms
  Process.clock_gettime(Process::CLOCK_REALTIME, :millisecond)
end

def mono_us
  Process.clock_gettime(Process::CLOCK_MONOTONIC, :microsecond)
end

# the only value in the statement is this loop's own integer
insert = "INSERT INTO events (user_id, name, properties, created_at) VALUES (%d, 'ar-load', '{}', now()) " \
         "RETURNING id, host(inet_server_addr())"
period = 1.0 / rate
next_at = Process.clock_gettime(Process::CLOCK_MONOTONIC)
n = 0
until $stop
  n += 1
  begin
    if mode == "write"
      t0 = mono_us
      row = ActiveRecord::Base.connection.select_rows(format(insert, 1 + (n % users)), "ar-load").first
      took = mono_us - t0
      log.puts "i #{row[0]} #{now_ms} #{row[1] || 'local'}#{latency == 'on' ? " #{took}" : ''}"
    else
      addr = ActiveRecord::Base.connection.select_value("SELECT host(inet_server_addr())")
      log.puts "r #{now_ms} #{addr || 'local'}"
    end
  rescue StandardError => e
    log.puts "e #{now_ms} #{e.class}"
    warn "#{Time.now.utc.strftime('%H:%M:%S.%L')} #{e.class}: #{e.message.lines.first&.strip}"
    begin
      ActiveRecord::Base.connection_pool.disconnect!
    rescue StandardError
      nil
    end
    sleep 0.05
  end
  next_at += period
  left = next_at - Process.clock_gettime(Process::CLOCK_MONOTONIC)
  if left.positive?
    sleep left
  else
    next_at = Process.clock_gettime(Process::CLOCK_MONOTONIC) # behind: no burst to catch up
  end
end
log.puts "stopped"
log.close
