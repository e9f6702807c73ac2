# Records what ActiveRecord hands PG.connect for each DATABASE_URL on stdin (one a line), as JSON lines.
# Re-record (Debian 12: apt-get install ruby ruby-activerecord ruby-pg; ActiveRecord 6.1.7.10, pg 1.4.5):
#   python -c "import json; [print(json.loads(l)['url']) for l in open('tests/golden/rails_url.activerecord-6.1.jsonl')]" \
#     | ruby tests/golden/rails_url.record.rb
require "json"
require "active_record"
require "pg"
require "active_record/connection_adapters/postgresql_adapter"
$captured = nil
class << ActiveRecord::ConnectionAdapters::PostgreSQLAdapter
  def new_client(params)
    $captured = params
    raise ActiveRecord::ConnectionNotEstablished, "captured"
  end
end
STDIN.each_line do |line|
  url = line.chomp
  $captured = nil
  begin
    ActiveRecord::Base.establish_connection(url)
    ActiveRecord::Base.connection
  rescue ActiveRecord::ConnectionNotEstablished
  rescue => e
    puts JSON.generate({"error" => e.class.name}); next
  end
  puts JSON.generate($captured.transform_keys(&:to_s).transform_values(&:to_s))
end
