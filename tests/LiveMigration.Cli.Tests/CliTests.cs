using System.Net.Http.Json;
using System.Text.Json;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// <c>lsm</c> run as a process against a real Coordinator and HostNode: what it prints, in tables and JSON,
/// and the exit code a script sees (0 ok, 1 failed, 2 bad input, 3 API unreachable).
/// </summary>
public sealed class CliTests(ClusterFixture cluster) : IClassFixture<ClusterFixture>
{
    private Task<CliResult> Lsm(params string[] arguments) => CliProcess.RunAsync(cluster.Api, arguments);

    [Fact]
    public async Task Without_a_token_a_browser_page_can_neither_post_a_form_nor_read_through_a_foreign_host_name()
    {
        using var http = new HttpClient();
        // A form POST (no CORS preflight) of another site to a loopback API: refused before it reaches the saga.
        var migration = Guid.NewGuid().ToString();
        using (var form = await http.PostAsync($"{cluster.Api}/api/migrations/{migration}/cancel", new FormUrlEncodedContent([])))
        {
            Assert.Equal(415, (int)form.StatusCode);
            Assert.Equal("NOT_JSON", JsonDocument.Parse(await form.Content.ReadAsStringAsync()).RootElement.GetProperty("code").GetString());
        }
        // DNS rebinding: a page's own name resolving to 127.0.0.1 still sends its name as the Host.
        using (var rebound = new HttpRequestMessage(HttpMethod.Get, $"{cluster.Api}/api/cluster"))
        {
            rebound.Headers.Host = "attacker.example:" + new Uri(cluster.Api).Port;
            using var answer = await http.SendAsync(rebound);
            Assert.Equal(403, (int)answer.StatusCode);
            Assert.Equal("FOREIGN_HOST", JsonDocument.Parse(await answer.Content.ReadAsStringAsync()).RootElement.GetProperty("code").GetString());
        }
        using (var local = new HttpRequestMessage(HttpMethod.Get, $"{cluster.Api}/api/cluster"))
        {
            local.Headers.Host = "localhost:" + new Uri(cluster.Api).Port;
            using var answer = await http.SendAsync(local);
            Assert.Equal(200, (int)answer.StatusCode);
        }
    }

    [Fact]
    public async Task Cluster_show_lists_the_coordinator_and_the_host_up_as_a_table_and_as_json()
    {
        var table = await Lsm("cluster", "show");
        Assert.True(table.ExitCode == 0, table.ToString());
        Assert.Equal(2, table.Stdout.Split('\n').Count(l => l.Contains("akka.tcp://lsm@127.0.0.1:") && l.Contains(" up ")));
        Assert.Contains($"akka.tcp://lsm@127.0.0.1:{cluster.Cluster.CoordinatorPort}", table.Stdout);
        Assert.Contains("leader", table.Stdout);

        var json = await Lsm("cluster", "show", "--json");
        Assert.True(json.ExitCode == 0, json.ToString());
        var members = JsonDocument.Parse(json.Stdout).RootElement.GetProperty("members").EnumerateArray().ToList();
        Assert.Equal(2, members.Count);
        Assert.All(members, m => Assert.Equal("up", m.GetProperty("status").GetString()));
        Assert.Contains(members, m => m.GetProperty("roles").EnumerateArray().Any(r => r.GetString() == "coordinator"));
        Assert.Contains(members, m => m.GetProperty("roles").EnumerateArray().Any(r => r.GetString() == "spm"));
    }

    [Fact]
    public async Task Sharding_regions_names_the_migration_region()
    {
        var result = await Lsm("cluster", "sharding", "regions", "--json");
        Assert.True(result.ExitCode == 0, result.ToString());
        var regions = JsonDocument.Parse(result.Stdout).RootElement.GetProperty("regions").EnumerateArray().ToList();
        var migration = Assert.Single(regions, r => r.GetProperty("typeName").GetString() == "migration");
        Assert.Equal(JsonValueKind.Null, migration.GetProperty("error").ValueKind);

        var table = await Lsm("cluster", "sharding", "regions");
        Assert.True(table.ExitCode == 0, table.ToString());
        Assert.Contains("migration", table.Stdout);
    }

    [Fact]
    public async Task Domains_hosts_and_vms_show_what_the_host_reported()
    {
        var domains = await Lsm("domains");
        Assert.True(domains.ExitCode == 0, domains.ToString());
        Assert.Contains("domain-a", domains.Stdout);
        Assert.Contains("domain-b", domains.Stdout);
        Assert.Contains(cluster.B.Id.ToString(), domains.Stdout);

        var domainsJson = JsonDocument.Parse((await Lsm("domains", "--json")).Stdout).RootElement.GetProperty("domains");
        Assert.Equal(2, domainsJson.GetArrayLength());

        var hosts = await Lsm("hosts", "--json");
        Assert.True(hosts.ExitCode == 0, hosts.ToString());
        var host = Assert.Single(JsonDocument.Parse(hosts.Stdout).RootElement.GetProperty("hosts").EnumerateArray());
        Assert.Equal("host-1", host.GetProperty("hostId").GetString());
        Assert.Equal("up", host.GetProperty("memberStatus").GetString());
        Assert.True(host.GetProperty("spmCapable").GetBoolean());

        var vms = await Lsm("vms");
        Assert.True(vms.ExitCode == 0, vms.ToString());
        Assert.Contains(cluster.Vm.ToString(), vms.Stdout);
        Assert.Contains(cluster.Image.ToString(), vms.Stdout);
        Assert.Contains("cli-vm", vms.Stdout);
    }

    [Fact]
    public async Task Bad_input_is_refused_with_exit_2_and_a_message_before_any_request()
    {
        // Against an address where nothing listens: a request would have given exit 3.
        var nowhere = "http://127.0.0.1:1";
        var disk = await CliProcess.RunAsync(nowhere, "migrate", "my-vm", "--to", "domain-b", "--disk", "disk-1");
        Assert.Equal(2, disk.ExitCode);
        Assert.Contains("--disk must be an image id", disk.Stderr);

        var strategy = await CliProcess.RunAsync(nowhere, "migrate", "my-vm", "--to", "domain-b", "--strategy", "fastest");
        Assert.Equal(2, strategy.ExitCode);
        Assert.Contains("--strategy must be pre-copy or post-copy", strategy.Stderr);

        var rate = await CliProcess.RunAsync(nowhere, "migrate", Guid.NewGuid().ToString(), "--to", "domain-b", "--bandwidth", "fast");
        Assert.Equal(2, rate.ExitCode);
        Assert.Contains("--bandwidth 'fast'", rate.Stderr);

        foreach (var parallel in new[] { "0", "65", "two" })
        {
            var disks = await CliProcess.RunAsync(nowhere, "migrate", "my-vm", "--to", "domain-b", "--parallel-disks", parallel);
            Assert.Equal(2, disks.ExitCode);
            Assert.Contains($"--parallel-disks must be a whole number from 1 to 64, got '{parallel}'", disks.Stderr);
        }

        var id = await CliProcess.RunAsync(nowhere, "migration", "show", "42");
        Assert.Equal(2, id.ExitCode);
        Assert.Contains("migration id must be a UUID", id.Stderr);

        var address = await CliProcess.RunAsync(nowhere, "cluster", "down", "akka.tcp://other@127.0.0.1:4053");
        Assert.Equal(2, address.ExitCode);
        Assert.Contains("not a member address", address.Stderr);
    }

    [Fact]
    public async Task The_api_refuses_leaving_a_stranger_and_a_foreign_address()
    {
        var stranger = await Lsm("cluster", "leave", "akka.tcp://lsm@127.0.0.1:1");
        Assert.True(stranger.ExitCode == 2, stranger.ToString());
        Assert.Contains("is not a member", stranger.Stderr);
        Assert.DoesNotContain("   at ", stranger.Stderr);
    }

    [Fact]
    public async Task The_api_answers_400_with_a_message_for_an_address_that_is_not_of_this_cluster()
    {
        using var http = new HttpClient();
        foreach (var address in new[] { "akka.tcp://other@127.0.0.1:4053", "http://127.0.0.1:4053", "nonsense", "" })
        {
            using var response = await http.PostAsync($"{cluster.Api}/api/cluster/down",
                new StringContent(JsonSerializer.Serialize(new { address }), System.Text.Encoding.UTF8, "application/json"));
            var body = await response.Content.ReadAsStringAsync();
            Assert.True((int)response.StatusCode == 400, $"{address}: {(int)response.StatusCode} {body}");
            Assert.Contains("akka.tcp://lsm@host:port", JsonDocument.Parse(body).RootElement.GetProperty("message").GetString());
        }
    }

    [Fact]
    public async Task Showing_an_unknown_migration_is_refused_with_exit_2()
    {
        var result = await Lsm("migration", "show", Guid.NewGuid().ToString());
        Assert.True(result.ExitCode == 2, result.ToString());
        Assert.Contains("404", result.Stderr);
    }

    [Fact]
    public async Task An_unreachable_api_gives_exit_3()
    {
        var result = await CliProcess.RunAsync(null, "cluster", "show", "--api", "http://127.0.0.1:1");
        Assert.Equal(3, result.ExitCode);
        Assert.Contains("cannot reach the Coordinator API", result.Stderr);
    }

    [Fact]
    public async Task Help_explains_commands_with_examples()
    {
        var root = await CliProcess.RunAsync(null, "--help");
        Assert.Equal(0, root.ExitCode);
        Assert.Contains("migrate", root.Stdout);
        var migrate = await CliProcess.RunAsync(null, "migrate", "--help");
        Assert.Equal(0, migrate.ExitCode);
        Assert.Contains("--bandwidth", migrate.Stdout);
        Assert.Contains("EXAMPLES", migrate.Stdout);
    }

    /// <summary>The domain the VM's disk is on now, as the inventory says (the migrating tests of this class move it back and forth).</summary>
    private async Task<string> CurrentDomainAsync()
    {
        using var http = new HttpClient();
        var inventory = await http.GetFromJsonAsync<JsonElement>($"{cluster.Api}/api/inventory");
        var vm = inventory.GetProperty("vms").EnumerateArray().Select(v => v.GetProperty("vm")).Single(v => v.GetProperty("id").GetString() == cluster.Vm.ToString());
        var drive = vm.GetProperty("drives").EnumerateArray().Single(d => d.GetProperty("image").GetString() == cluster.Image.ToString());
        return drive.GetProperty("chain").EnumerateArray().Last().GetProperty("domain").GetString()!;
    }

    /// <summary>The other domain than the disk's: (name, id).</summary>
    private async Task<(string Name, string Id)> OtherDomainAsync() =>
        await CurrentDomainAsync() == cluster.A.Id.ToString() ? ("domain-b", cluster.B.Id.ToString()) : ("domain-a", cluster.A.Id.ToString());

    /// <summary>After a migration, the next one must see the disk where it went: wait for the host's report to say so.</summary>
    private async Task AwaitInventoryShowsAsync(string domain)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (await CurrentDomainAsync() != domain)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"the inventory did not show the disk on {domain} within 30 s");
            await Task.Delay(250);
        }
    }

    [Fact]
    public async Task Migrate_with_wait_moves_every_disk_of_the_vm_to_the_named_domain_and_exits_0()
    {
        var (name, destination) = await OtherDomainAsync();
        var result = await Lsm("migrate", cluster.Vm.ToString(), "--to", name, "--strategy", "pre-copy", "--bandwidth", "200MiB/s", "--wait");
        Assert.True(result.ExitCode == 0, result + "\n" + cluster.LogTails());
        Assert.Contains("completed", result.Stdout);
        var id = result.Stdout.Split('\n')[0].Split(' ')[1];

        var shown = await Lsm("migration", "show", id, "--json");
        Assert.True(shown.ExitCode == 0, shown.ToString());
        var migration = JsonDocument.Parse(shown.Stdout).RootElement;
        Assert.Equal("completed", migration.GetProperty("status").GetString());
        var disk = Assert.Single(migration.GetProperty("disks").EnumerateArray());
        Assert.Equal(cluster.Image.ToString(), disk.GetProperty("image").GetString());
        Assert.Equal(destination, disk.GetProperty("destination").GetString());
        // What its steps copied together, not the last step's progress (the source's deletion, nothing copied)
        Assert.True(disk.GetProperty("copied").GetInt64() > 0, disk.ToString());
        // The pivot carries its stall as the VM's host timed it (block-job-complete to the job's end, real QEMU)…
        var pivot = disk.GetProperty("timings").EnumerateArray().Last(t => t.GetProperty("step").GetString() == "Pivot");
        var stallMs = pivot.GetProperty("switchStallMs").GetDouble();
        var pivotMs = (pivot.GetProperty("endedAt").GetDateTimeOffset() - pivot.GetProperty("startedAt").GetDateTimeOffset()).TotalMilliseconds;
        Assert.InRange(stallMs, 0.01, pivotMs);
        // …and `lsm migration show` says it beside the step's round trip.
        var table = await Lsm("migration", "show", id);
        Assert.Contains("Switch stall", table.Stdout);
        Assert.Contains(table.Stdout.Split('\n'), l => l.Contains("Pivot") && l.Contains($"{stallMs:0.0} ms"));

        // A finished migration cannot be cancelled, resumed or abandoned: each is the saga's refusal, exit 2 with its
        // message, and the migration stays completed. (Resume and abandon of a suspended one: MigrationSagaTests.)
        var cancel = await Lsm("migration", "cancel", id);
        Assert.True(cancel.ExitCode == 2, cancel.ToString());
        foreach (var action in new[] { "resume", "abandon" })
        {
            var refused = await Lsm("migration", action, id);
            Assert.True(refused.ExitCode == 2, refused.ToString());
            Assert.Contains("NOT_SUSPENDED", refused.Stderr);
        }
        var after = await Lsm("migration", "show", id, "--json");
        Assert.Equal("completed", JsonDocument.Parse(after.Stdout).RootElement.GetProperty("status").GetString());
        // As the tables print it, cut short: the one migration whose id begins so; one nobody's begins so is refused.
        var byPrefix = await Lsm("migration", "show", id[..8], "--json");
        Assert.True(byPrefix.ExitCode == 0, byPrefix.ToString());
        Assert.Equal(id, JsonDocument.Parse(byPrefix.Stdout).RootElement.GetProperty("id").GetString());
        var nobodys = (id[0] == 'f' ? "e" : "f") + id[1..8];
        var none = await Lsm("migration", "cancel", nobodys);
        Assert.True(none.ExitCode == 2, none.ToString());
        Assert.Contains($"no migration's id begins with '{nobodys}'", none.Stderr);
        await AwaitInventoryShowsAsync(destination);
    }

    [Fact]
    public async Task A_slow_migration_pushes_copy_progress_set_speed_lifts_its_limit_and_the_list_and_metrics_show_it()
    {
        var (name, destination) = await OtherDomainAsync();
        var started = await Lsm("migrate", cluster.Vm.ToString(), "--to", name, "--bandwidth", "128k", "--json");
        Assert.True(started.ExitCode == 0, started.ToString());
        var id = JsonDocument.Parse(started.Stdout).RootElement.GetProperty("id").GetString()!;

        var active = await Lsm("migrations", "--active", "--json");
        Assert.True(active.ExitCode == 0, active.ToString());
        Assert.Contains(JsonDocument.Parse(active.Stdout).RootElement.GetProperty("migrations").EnumerateArray(), m => m.GetProperty("id").GetString() == id);

        // At 128 KiB/s the SPM's copy of the internal layers (which the limit holds too) takes over a minute, the mirror
        // beside it as long: a window wide enough for a loaded machine to see the copy move and set the speed. The SPM
        // reports the copy's progress as it goes (HsmMirrorProgressTests shows the mirror's once-a-second push).
        using var http = new HttpClient();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            var migration = await http.GetFromJsonAsync<JsonElement>($"{cluster.Api}/api/migrations/{id}");
            Assert.False(migration.GetProperty("finished").GetBoolean(), $"finished before its copy was seen running: {migration}");
            var disk = migration.GetProperty("disks")[0];
            // the SPM's copy, so that the speed change below is seen reaching it (the mirror's is HsmMirrorProgressTests')
            if (disk.GetProperty("step").GetString() is "SyncInternalVolumes" && disk.GetProperty("total").GetInt64() > 0
                && disk.GetProperty("done").GetInt64() > 0)
            {
                Assert.InRange(disk.GetProperty("done").GetInt64(), 1, disk.GetProperty("total").GetInt64());
                break;
            }
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"no copy progress within 60 s: {migration}\n{cluster.LogTails()}");
            await Task.Delay(100);
        }

        // the limits as asked, in the API and in `migration show`
        var limited = await http.GetFromJsonAsync<JsonElement>($"{cluster.Api}/api/migrations/{id}");
        Assert.Equal(128 * 1024, limited.GetProperty("bandwidthBytesPerSecond").GetInt64());
        Assert.Equal(1, limited.GetProperty("maxParallelDisks").GetInt32());
        Assert.Equal("background", limited.GetProperty("copyMode").GetString());
        var shown = await Lsm("migration", "show", id);
        Assert.True(shown.ExitCode == 0, shown.ToString());
        Assert.Contains(shown.Stdout.Split('\n'), l => l.Contains("Speed limit") && l.Contains("128.0 KiB/s"));
        Assert.Contains(shown.Stdout.Split('\n'), l => l.Contains($"→ {name}")); // the destination by its name

        var speed = await Lsm("migration", "set-speed", id, "0");
        Assert.True(speed.ExitCode == 0, speed.ToString());
        Assert.Contains("unlimited", speed.Stdout);
        Assert.Equal(0, (await http.GetFromJsonAsync<JsonElement>($"{cluster.Api}/api/migrations/{id}")).GetProperty("bandwidthBytesPerSecond").GetInt64());
        var end = await AwaitFinishedAsync(http, id);
        Assert.Equal("completed", end.GetProperty("status").GetString());
        // The new speed reached the SPM's running copy of the internal layers (it logs once its copy follows it), on
        // whichever host runs the SPM.
        var hostLogs = "";
        foreach (var log in Directory.EnumerateFiles(Path.Combine(cluster.DataDirectory, "logs"), "host-*.log"))
            hostLogs += await ReadSharedAsync(log);
        Assert.Matches($"Speed of {id}/SyncInternalVolumes:\\S+ set to 0 B/s: its copy follows it now", hostLogs);

        var late = await Lsm("migration", "set-speed", id, "1MiB/s");
        Assert.True(late.ExitCode == 2, late.ToString());
        Assert.Contains("MIGRATION_FINISHED", late.Stderr);

        var all = await Lsm("migrations", "--json");
        Assert.True(all.ExitCode == 0, all.ToString());
        var listed = Assert.Single(JsonDocument.Parse(all.Stdout).RootElement.GetProperty("migrations").EnumerateArray(), m => m.GetProperty("id").GetString() == id);
        Assert.Equal("completed", listed.GetProperty("status").GetString());
        var table = await Lsm("migrations");
        Assert.True(table.ExitCode == 0, table.ToString());
        Assert.Contains(table.Stdout.Split('\n'), l => l.Contains(id) && l.Contains("completed") && l.Contains("1/1"));
        var stillActive = await Lsm("migrations", "--active", "--json");
        Assert.DoesNotContain(JsonDocument.Parse(stillActive.Stdout).RootElement.GetProperty("migrations").EnumerateArray(), m => m.GetProperty("id").GetString() == id);

        var metrics = await http.GetStringAsync($"{cluster.Api}/metrics");
        foreach (var metric in new[] { "lsm_migrations_active", "lsm_migrations_completed_total", "lsm_migration_copied_bytes_total",
                     "lsm_migration_step_duration_seconds_bucket", "lsm_migration_pivot_stall_seconds_count",
                     "lsm_migration_switch_stall_seconds_count" })
            Assert.Contains(metric, metrics);
        Assert.Contains("step=\"Pivot\"", metrics);
        await AwaitInventoryShowsAsync(destination);
    }

    [Fact]
    public async Task A_cancel_during_a_slow_copy_of_the_internal_layers_stops_the_copy_and_the_migration_ends_cancelled_with_no_copy_left()
    {
        var (name, destination) = await OtherDomainAsync();
        var source = await CurrentDomainAsync();
        var destinationDomain = destination == cluster.A.Id.ToString() ? cluster.A : cluster.B;
        // 32 KiB/s shared by the mirror and the SPM's copy: the internal layers alone would take over ten minutes.
        var started = await Lsm("migrate", cluster.Vm.ToString(), "--to", name, "--bandwidth", "32k", "--json");
        Assert.True(started.ExitCode == 0, started.ToString());
        var id = JsonDocument.Parse(started.Stdout).RootElement.GetProperty("id").GetString()!;
        using var http = new HttpClient();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            var migration = await http.GetFromJsonAsync<JsonElement>($"{cluster.Api}/api/migrations/{id}");
            var disk = migration.GetProperty("disks")[0];
            if (disk.GetProperty("step").GetString() == "SyncInternalVolumes" && disk.GetProperty("done").GetInt64() > 0) break;
            Assert.False(migration.GetProperty("finished").GetBoolean(), $"finished before its copy was seen running: {migration}");
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"no copy of the internal layers within 60 s: {migration}\n{cluster.LogTails()}");
            await Task.Delay(100);
        }

        var cancel = await Lsm("migration", "cancel", id);
        Assert.True(cancel.ExitCode == 0, cancel.ToString());
        var end = await AwaitFinishedAsync(http, id);
        Assert.Equal("cancelled", end.GetProperty("status").GetString());
        // The copy was stopped, not waited for: its step failed STEP_STOPPED, then the mirror was cancelled and the copy removed.
        var timings = end.GetProperty("disks")[0].GetProperty("timings").EnumerateArray()
            .Select(t => (Step: t.GetProperty("step").GetString(), Outcome: t.GetProperty("outcome").GetString())).ToList();
        Assert.Contains(("SyncInternalVolumes", $"failed {ErrorCodes.StepStopped}"), timings);
        Assert.Equal(("DeleteDestinationImage", "completed"), timings[^1]);
        Assert.DoesNotContain(cluster.Image, await destinationDomain.ListImagesAsync());
        Assert.Empty(OrphanCopies.CopiesUnder([cluster.A.DomainPath, cluster.B.DomainPath]));
        Assert.Equal(source, await CurrentDomainAsync());
    }

    private async Task<JsonElement> AwaitFinishedAsync(HttpClient http, string id)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(90);
        while (true)
        {
            var migration = await http.GetFromJsonAsync<JsonElement>($"{cluster.Api}/api/migrations/{id}");
            if (migration.GetProperty("finished").GetBoolean()) return migration;
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"migration {id} did not finish in 90 s: {migration}\n{cluster.LogTails()}");
            await Task.Delay(250);
        }
    }

    private static async Task<string> ReadSharedAsync(string path)
    {
        await using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return await reader.ReadToEndAsync();
    }

    [Fact]
    public async Task Region_stats_lists_the_shards_per_node_and_an_unknown_type_is_exit_2()
    {
        var json = await Lsm("cluster", "sharding", "region-stats", "migration", "--json");
        Assert.True(json.ExitCode == 0, json.ToString());
        var stats = JsonDocument.Parse(json.Stdout).RootElement;
        Assert.Equal("migration", stats.GetProperty("typeName").GetString());
        Assert.Contains(stats.GetProperty("nodes").EnumerateArray(),
            n => n.GetProperty("address").GetString() == $"akka.tcp://lsm@127.0.0.1:{cluster.Cluster.CoordinatorPort}");

        var table = await Lsm("cluster", "sharding", "region-stats", "migration");
        Assert.True(table.ExitCode == 0, table.ToString());
        Assert.Contains($"127.0.0.1:{cluster.Cluster.CoordinatorPort}", table.Stdout);

        var unknown = await Lsm("cluster", "sharding", "region-stats", "no-such-type");
        Assert.True(unknown.ExitCode == 2, unknown.ToString());
        Assert.Contains("no shard region 'no-such-type'", unknown.Stderr);
    }

    [Fact]
    public async Task Tail_prints_the_members_as_events_and_ends_after_its_seconds_and_down_unreachable_downs_nobody_in_a_healthy_cluster()
    {
        var tail = await Lsm("cluster", "tail", "--seconds", "3");
        Assert.True(tail.ExitCode == 0, tail.ToString());
        Assert.Equal(2, tail.Stdout.Split('\n').Count(l => l.Contains("MemberUp") && l.Contains("akka.tcp://lsm@127.0.0.1:")));

        var json = await Lsm("cluster", "tail", "--seconds", "2", "--json");
        Assert.True(json.ExitCode == 0, json.ToString());
        var events = json.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Contains(events, e => e.GetProperty("type").GetString() == "MemberUp" && e.GetProperty("roles").EnumerateArray().Any(r => r.GetString() == "spm"));

        var down = await Lsm("cluster", "down-unreachable", "--json");
        Assert.True(down.ExitCode == 0, down.ToString());
        Assert.Equal(0, JsonDocument.Parse(down.Stdout).RootElement.GetProperty("downed").GetArrayLength());
        var downTable = await Lsm("cluster", "down-unreachable");
        Assert.Contains("no unreachable members", downTable.Stdout);
    }

    [Fact]
    public async Task Health_says_ready_with_its_checks_and_metrics_are_prometheus_text()
    {
        using var http = new HttpClient();
        foreach (var path in new[] { "/healthz", "/healthz/ready" })
        {
            var ready = await http.GetFromJsonAsync<JsonElement>($"{cluster.Api}{path}");
            Assert.Equal("up", ready.GetProperty("status").GetString());
            Assert.Equal("up", ready.GetProperty("checks").GetProperty("cluster").GetProperty("status").GetString());
            Assert.Equal("up", ready.GetProperty("checks").GetProperty("journal").GetProperty("status").GetString());
        }
        using var live = await http.GetAsync($"{cluster.Api}/healthz/live");
        Assert.Equal(200, (int)live.StatusCode);
        using var metrics = await http.GetAsync($"{cluster.Api}/metrics");
        Assert.Equal(200, (int)metrics.StatusCode);
        Assert.StartsWith("text/plain", metrics.Content.Headers.ContentType?.MediaType);
        Assert.Contains("# TYPE lsm_migrations_active gauge", await metrics.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Every_new_command_explains_itself_with_an_example()
    {
        foreach (var command in new[] { new[] { "migrations" }, ["migration", "set-speed"], ["cluster", "down-unreachable"], ["cluster", "tail"],
                     ["cluster", "sharding", "region-stats"] })
        {
            var help = await CliProcess.RunAsync(null, [.. command, "--help"]);
            Assert.True(help.ExitCode == 0, help.ToString());
            Assert.Contains("EXAMPLES", help.Stdout);
            Assert.Contains("--token", help.Stdout);
        }
    }
}
