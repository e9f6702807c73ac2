# frozen_string_literal: true
#
# bench/backup_latency.py's writer: the lab app's ActiveRecord insert (hcbpg/lab/ar_load.rb's statement, the same
# handed-out DATABASE_URL read from a 0600 env file, never the command line), each one timed.
#
#   ruby backup_latency_writer.rb env_file=FILE var=DATABASE_URL log=FILE rate=50 users=1000
#
# After each acknowledged commit one line "w T_MS LATENCY_US SERVER" (T_MS: wall-clock milliseconds when the
# insert was sent; LATENCY_US: from sending it to its answer, monotonic clock).  An error: "e T_MS CLASS", then the
# pool is disconnected and the next try comes 50 ms later.  SIGTERM ends the loop: "stopped" is the last line.

require "shellwords"

opts = ARGV.to_h { |a| a.split("=", 2) }
env_file = opts.fetch("env_file")
var = opts.fetch("var", "DATABASE_URL")
log_path = opts.fetch("log")
rate = Float(opts.fetch("rate", "50"))
users = Integer(opts.fetch("users", "1000"))
abort "backup_latency_writer: rate must be positive" unless rate.positive?

url = nil
File.foreach(env_file) do |line|
  name, value = line.chomp.split("=", 2)
  url = Shellwords.split(value).first if name == var && value
end
abort "backup_latency_writer: #{env_file} has no #{var}= line" if url.nil? || url.empty?
ENV["DATABASE_URL"] = url

require "active_record"
require "pg"

PG::Connection.async_api = false
ActiveRecord::Base.establish_connection

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

insert = "INSERT INTO events (user_id, name, properties, created_at) VALUES (%d, 'backup-latency', '{}', now()) " \
         "RETURNING id, host(inet_server_addr())"
period = 1.0 / rate
next_at = Process.clock_gettime(Process::CLOCK_MONOTONIC)
n = 0
until $stop
  n += 1
  sent_ms = now_ms
  t0 = mono_us
  begin
    row = ActiveRecord::Base.connection.select_rows(format(insert, 1 + (n % users)), "backup-latency").first
    log.puts "w #{sent_ms} #{mono_us - t0} #{row[1] || 'local'}"
  rescue StandardError => e
    log.puts "e #{sent_ms} #{e.class}"
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
    next_at = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
log.puts "stopped"
log.close
