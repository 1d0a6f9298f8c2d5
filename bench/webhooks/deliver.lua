-- deliver.lua: wrk script for bench/webhooks.
--
-- Thread t posts the precomputed signed deliveries of
-- $FFBENCH_DIR/deliveries.<t>.tsv, one per request, each exactly once, over
-- keep-alive connections with the Host header they were signed for.  When
-- all of its deliveries are answered it writes $FFBENCH_DIR/done.<t> and
-- stops; a connection that asks for a request after the thread's last
-- delivery was sent gets "GET <path>" (answered 405, stores no event), so
-- no delivery is ever cut off unanswered and every stored event is counted.
-- The first request() of each thread is a filler too: wrk calls it once to
-- verify the script and discards the result.  With FFBENCH_TRACE set, each
-- thread writes what it sent and got to $FFBENCH_DIR/trace.<t> (slow).
-- done() prints one line: FFBENCH ok=<2xx> failed=<other answers to
-- deliveries> extra=<405 fillers> deliveries=<sent> p50_us= p99_us= max_us=

local dir = os.getenv("FFBENCH_DIR")
local host = os.getenv("FFBENCH_HOST")
local path = os.getenv("FFBENCH_PATH")

local next_id = 0
local threads = {}

function setup(thread)
	thread:set("id", next_id)
	next_id = next_id + 1
	table.insert(threads, thread)
end

function init(args)
	reqs = {}
	local f = assert(io.open(dir .. "/deliveries." .. id .. ".tsv", "r"))
	for line in f:lines() do
		local nonce, date, hash, auth, sig, body =
			line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
		reqs[#reqs + 1] = "POST " .. path .. " HTTP/1.1\r\n"
			.. "Host: " .. host .. "\r\n"
			.. "Content-Type: text/plain; charset=utf-8\r\n"
			.. "x-fc-nonce: " .. nonce .. "\r\n"
			.. "x-fc-date: " .. date .. "\r\n"
			.. "x-fc-content-sha512: " .. hash .. "\r\n"
			.. "x-fc-authorization: " .. auth .. "\r\n"
			.. "x-fc-signature: " .. sig .. "\r\n"
			.. "Content-Length: " .. #body .. "\r\n\r\n" .. body
	end
	f:close()
	if os.getenv("FFBENCH_TRACE") then trace = assert(io.open(dir .. "/trace." .. id, "w")) end
	filler = "GET " .. path .. " HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n"
	quota = #reqs
	sent = 0
	answered = 0
	ok = 0
	failed = 0
	extra = 0
	finished = false
	if quota == 0 then
		finished = true
		local m = assert(io.open(dir .. "/done." .. id, "w"))
		m:write("0 0\n")
		m:close()
	end
end

function request()
	-- wrk calls request() once before any connection exists, to verify the
	-- script, and throws that request away: give it a filler, never a delivery
	if not probed then
		probed = true
		return filler
	end
	if sent < quota then
		sent = sent + 1
		if trace then trace:write("req " .. sent .. "\n"); trace:flush() end
		return reqs[sent]
	end
	return filler
end

function response(status, headers, body)
	if status == 405 then
		extra = extra + 1
		return
	end
	answered = answered + 1
	if trace then trace:write("resp " .. status .. " " .. body .. "\n"); trace:flush() end
	if status >= 200 and status < 300 then
		ok = ok + 1
	else
		failed = failed + 1
	end
	if answered == quota and not finished then
		finished = true
		local m = assert(io.open(dir .. "/done." .. id, "w"))
		m:write(ok .. " " .. failed .. "\n")
		m:close()
		wrk.thread:stop()
	end
end

function done(summary, latency, requests)
	local t_ok, t_failed, t_extra, t_sent = 0, 0, 0, 0
	for _, t in ipairs(threads) do
		t_ok = t_ok + t:get("ok")
		t_failed = t_failed + t:get("failed")
		t_extra = t_extra + t:get("extra")
		t_sent = t_sent + t:get("sent")
	end
	io.write(string.format("FFBENCH ok=%d failed=%d extra=%d deliveries=%d p50_us=%d p99_us=%d max_us=%d "
		.. "socket_errors=%d\n",
		t_ok, t_failed, t_extra, t_sent, latency:percentile(50), latency:percentile(99), latency.max,
		summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
