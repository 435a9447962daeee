using System.Diagnostics;
using System.Text.Json;
using LiveMigration.Cli.Api;
using LiveMigration.Cli.Local;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// <c>lsm local up/status/down</c> run as processes, as an operator types them: the nodes must outlive the
/// <c>lsm</c> that started them, and down must leave no node and no VM behind (checked in /proc).
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class LocalCommandTests : IAsyncLifetime
{
    // Short, under /tmp: a VM's unix sockets would live below it.
    private readonly string _dataDirectory = Path.Combine("/tmp", $"lsm-{Guid.NewGuid().ToString("N")[..8]}");

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        // Whatever a failed assertion left running is stopped by pid before the directory goes.
        if (Directory.Exists(_dataDirectory))
        {
            await LocalClusterLauncher.DownAsync(_dataDirectory);
            Directory.Delete(_dataDirectory, recursive: true);
        }
    }

    [Fact]
    public async Task Up_status_down_starts_a_detached_cluster_and_stops_every_process_and_vm()
    {
        var up = await CliProcess.RunAsync(null, "local", "up", "--hosts", "2", "--data-dir", _dataDirectory, "--api-port", "0", "--fast-timings");
        Assert.True(up.ExitCode == 0, up.ToString());

        var state = await LocalClusterState.ReadAsync(_dataDirectory) ?? throw new Xunit.Sdk.XunitException($"no state file after up\n{up}");
        Assert.Equal(new[] { "coordinator", "host-1", "host-2" }, state.Nodes.Select(n => n.Name));
        Assert.Equal(new[] { "coordinator", "host,spm", "host" }, state.Nodes.Select(n => n.Role));
        var pids = state.Nodes.Select(n => n.Pid).ToList();
        foreach (var pid in pids)
        {
            // Alive after lsm exited, and detached: each node leads a session of its own, with no stdio of lsm's.
            Assert.True(Directory.Exists($"/proc/{pid}"), $"pid {pid} is gone after up returned\n{up}");
            Assert.Equal(pid.ToString(), SessionId(pid));
            Assert.Equal("/dev/null", new FileInfo($"/proc/{pid}/fd/0").LinkTarget);
        }

        var show = await CliProcess.RunAsync(null, "cluster", "show", "--api", state.ApiUrl, "--json");
        Assert.True(show.ExitCode == 0, show.ToString());
        var members = JsonDocument.Parse(show.Stdout).RootElement.GetProperty("members").EnumerateArray().ToList();
        Assert.Equal(3, members.Count(m => m.GetProperty("status").GetString() == "up"));
        Assert.Equal(state.Nodes.Select(n => n.Address).Order(), members.Select(m => m.GetProperty("address").GetString()).Order());

        var status = await CliProcess.RunAsync(null, "local", "status", "--data-dir", _dataDirectory, "--json");
        Assert.True(status.ExitCode == 0, status.ToString());
        var statusJson = JsonDocument.Parse(status.Stdout).RootElement;
        Assert.Equal(state.ApiUrl, statusJson.GetProperty("apiUrl").GetString());
        Assert.Equal(3, statusJson.GetProperty("nodes").EnumerateArray().Count(n => n.GetProperty("alive").GetBoolean()));
        var table = await CliProcess.RunAsync(null, "local", "status", "--data-dir", _dataDirectory);
        Assert.Contains("3 of 3 alive", table.Stdout);

        // A second up on the same directory refuses while the first one runs, and starts nothing.
        var again = await CliProcess.RunAsync(null, "local", "up", "--data-dir", _dataDirectory, "--api-port", "0", "--fast-timings");
        Assert.True(again.ExitCode == ExitCodes.BadUsage, again.ToString());
        Assert.Contains("already runs", again.Stderr);
        Assert.Equal(pids, (await LocalClusterState.ReadAsync(_dataDirectory))!.Nodes.Select(n => n.Pid));

        // A QEMU the way a host runs one: daemonized, its pid file under the host's run directory.
        var vmPid = await StartIdleQemuAsync(Path.Combine(LocalCluster.HostRunDirectoryOf(_dataDirectory, "host-2"), "vms", "idle.pid"));

        var down = await CliProcess.RunAsync(null, "local", "down", "--data-dir", _dataDirectory);
        Assert.True(down.ExitCode == 0, down.ToString());
        foreach (var pid in pids.Append(vmPid))
            Assert.False(Directory.Exists($"/proc/{pid}"), $"pid {pid} still runs after down\n{down}");

        var after = await CliProcess.RunAsync(null, "local", "status", "--data-dir", _dataDirectory, "--json");
        Assert.True(after.ExitCode == 0, after.ToString());
        Assert.All(JsonDocument.Parse(after.Stdout).RootElement.GetProperty("nodes").EnumerateArray(), n => Assert.False(n.GetProperty("alive").GetBoolean()));
    }

    [Fact]
    public async Task Up_again_after_a_host_was_killed_starts_exactly_that_host_and_down_then_stops_everything()
    {
        var up = await CliProcess.RunAsync(null, "local", "up", "--hosts", "2", "--data-dir", _dataDirectory, "--api-port", "0", "--fast-timings");
        Assert.True(up.ExitCode == 0, up.ToString());
        var state = (await LocalClusterState.ReadAsync(_dataDirectory))!;
        var api = state.ApiUrl;

        // The README's session, typed at once after up: two domains, then a VM on the first. Each domain the API said it
        // created must be found by the next command (it was sometimes 404 DOMAIN_NOT_FOUND: a host that had not attached
        // the new domain yet replaced the inventory's whole list with its own).
        var domains = Path.Combine(_dataDirectory, "domains");
        foreach (var name in new[] { "sdA", "sdB" })
        {
            var create = await CliProcess.RunAsync(api, "domain", "create", name, "--path", domains, "--capacity", "1GiB");
            Assert.True(create.ExitCode == 0, create.ToString());
        }
        var vm = await CliProcess.RunAsync(api, "vm", "create", "vm1", "--host", "host-1", "--disk", "64MiB@sdA:snapshots=2");
        Assert.True(vm.ExitCode == 0, vm.ToString());

        var host2 = state.Nodes.Single(n => n.Name == "host-2");
        var host2Certificate = File.ReadAllText(Path.Combine(_dataDirectory, "tls", "host-2.crt"));
        ProcessTable.Signal(host2.Pid, ProcessTable.SigKill);
        await ProcessTable.WaitGoneAsync([host2], n => n.Alive, TimeSpan.FromSeconds(10));
        var crashed = await CliProcess.RunAsync(null, "local", "status", "--data-dir", _dataDirectory);
        Assert.Contains("2 of 3 alive", crashed.Stdout);

        var again = await CliProcess.RunAsync(null, "local", "up", "--data-dir", _dataDirectory, "--api-port", "0", "--fast-timings");
        Assert.True(again.ExitCode == 0, again.ToString());
        Assert.Contains("host-2 was not running", again.Stdout);
        // its old incarnation left the cluster before the new one started: no member met both (issue 10: a member still
        // holding the old one could keep a one-way association to the new one)
        var removed = again.Stdout.IndexOf($"host-2: its old incarnation {host2.Address} is out of the cluster", StringComparison.Ordinal);
        Assert.True(removed >= 0 && removed < again.Stdout.IndexOf("host-2 was not running", StringComparison.Ordinal), again.ToString());
        foreach (var log in Directory.GetFiles(Path.Combine(_dataDirectory, "logs"), "*.log"))
            Assert.DoesNotContain("New incarnation of existing member", File.ReadAllText(log));
        var restarted = (await LocalClusterState.ReadAsync(_dataDirectory))!;
        // exactly host-2 is new; the others are the same processes, and the API stayed where it was
        Assert.Equal(api, restarted.ApiUrl);
        Assert.NotEqual(host2.Pid, restarted.Nodes.Single(n => n.Name == "host-2").Pid);
        Assert.Equal(state.Nodes.Where(n => n.Name != "host-2").Select(n => n.Pid), restarted.Nodes.Where(n => n.Name != "host-2").Select(n => n.Pid));
        Assert.Equal(host2.Port, restarted.Nodes.Single(n => n.Name == "host-2").Port);
        // with the certificate it had (the running members trust its CA, which the restart kept too)
        Assert.Equal(host2Certificate, File.ReadAllText(Path.Combine(_dataDirectory, "tls", "host-2.crt")));
        Assert.Contains(Path.Combine(_dataDirectory, "tls", "host-2.crt"), ProcessTable.CommandLine(restarted.Nodes.Single(n => n.Name == "host-2").Pid));

        var status = await CliProcess.RunAsync(null, "local", "status", "--data-dir", _dataDirectory);
        Assert.Contains("3 of 3 alive", status.Stdout);
        var show = await CliProcess.RunAsync(api, "cluster", "show", "--json");
        var members = JsonDocument.Parse(show.Stdout).RootElement.GetProperty("members").EnumerateArray().ToList();
        Assert.Equal(3, members.Count(m => m.GetProperty("status").GetString() == "up" && m.GetProperty("reachable").GetBoolean()));
        var listed = await CliProcess.RunAsync(api, "domains", "--json");
        Assert.Contains("\"sdA\"", listed.Stdout);
        Assert.Contains("\"sdB\"", listed.Stdout);

        var down = await CliProcess.RunAsync(null, "local", "down", "--data-dir", _dataDirectory);
        Assert.True(down.ExitCode == 0, down.ToString());
        foreach (var pid in restarted.Nodes.Select(n => n.Pid).Append(host2.Pid))
            Assert.False(ProcessTable.IsAlive(pid), $"pid {pid} still runs after down\n{down}");
        Assert.Empty(LocalClusterLauncher.RunningVms(restarted));
    }

    // Tried by hand on 2026-12-06: a libvirt cluster on --api-port 9121 was refused a bare `lsm local up --data-dir DIR`
    // after a crash ("give --hypervisor libvirt"), and once all its nodes had died came back with its API on 9110.
    [Fact]
    public async Task Up_without_options_brings_a_stopped_cluster_back_with_its_hypervisor_and_api_port()
    {
        var first = await CliProcess.RunAsync(null, "local", "up", "--hosts", "1", "--hypervisor", "sim", "--data-dir", _dataDirectory,
            "--api-port", "0", "--fast-timings");
        Assert.True(first.ExitCode == 0, first.ToString());
        var ran = (await LocalClusterState.ReadAsync(_dataDirectory))!;
        Assert.Equal(0, (await CliProcess.RunAsync(null, "local", "down", "--data-dir", _dataDirectory)).ExitCode);

        var again = await CliProcess.RunAsync(null, "local", "up", "--hosts", "1", "--data-dir", _dataDirectory, "--fast-timings");

        Assert.True(again.ExitCode == 0, again.ToString());
        var back = (await LocalClusterState.ReadAsync(_dataDirectory))!;
        Assert.Equal(("sim", ran.ApiPort), (back.Hypervisor, back.ApiPort));
        // told otherwise, it does what it is told (and says what does not fit)
        Assert.Equal(0, (await CliProcess.RunAsync(null, "local", "down", "--data-dir", _dataDirectory)).ExitCode);
        var libvirtUriOnSim = await CliProcess.RunAsync(null, "local", "up", "--libvirt-uri", "qemu:///session", "--data-dir", _dataDirectory);
        Assert.True(libvirtUriOnSim.ExitCode == ExitCodes.BadUsage, libvirtUriOnSim.ToString());
        Assert.Contains("need --hypervisor libvirt", libvirtUriOnSim.Stderr);

        // a cluster that ran on PostgreSQL is not brought back on SQLite (the state file keeps its address without the password)
        await (back with { Journal = "postgres (postgres://lsm@127.0.0.1:5432/lsm)" }).WriteAsync();
        var onSqlite = await CliProcess.RunAsync(null, "local", "up", "--data-dir", _dataDirectory);
        Assert.True(onSqlite.ExitCode == ExitCodes.BadUsage, onSqlite.ToString());
        Assert.Contains("ran with the journal postgres", onSqlite.Stderr);
        // nothing started: the state file is the one written above
        Assert.Equal("postgres (postgres://lsm@127.0.0.1:5432/lsm)", (await LocalClusterState.ReadAsync(_dataDirectory))!.Journal);
    }

    [Fact]
    public async Task Migrate_wait_follows_its_migration_across_a_coordinator_restart_to_completed()
    {
        var up = await CliProcess.RunAsync(null, "local", "up", "--hosts", "1", "--data-dir", _dataDirectory, "--api-port", "0", "--fast-timings");
        Assert.True(up.ExitCode == 0, up.ToString());
        var state = (await LocalClusterState.ReadAsync(_dataDirectory))!;
        var api = state.ApiUrl;
        var domains = Path.Combine(_dataDirectory, "domains");
        foreach (var name in new[] { "src", "dst" })
            Assert.Equal(0, (await CliProcess.RunAsync(api, "domain", "create", name, "--path", domains, "--capacity", "512MiB")).ExitCode);
        var vm = await CliProcess.RunAsync(api, "vm", "create", "vm1", "--host", "host-1", "--disk", "32MiB@src:snapshots=1");
        Assert.True(vm.ExitCode == 0, vm.ToString());
        // The guest writes faster than the mirror may copy for a few seconds: the migration is still before its pivot
        // while the Coordinator is killed and started again.
        Assert.Equal(0, (await CliProcess.RunAsync(api, "vm", "io", "vm1", "--rate", "1MiB/s", "--seconds", "8")).ExitCode);

        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var migrating = CliProcess.RunAsync(api, line => { if (line.StartsWith("migration ")) started.TrySetResult(); },
            "migrate", "vm1", "--to", "dst", "--bandwidth", "512KiB/s", "--wait");
        await started.Task.WaitAsync(TimeSpan.FromSeconds(60));
        var coordinator = state.Nodes.Single(n => n.Name == "coordinator");
        ProcessTable.Signal(coordinator.Pid, ProcessTable.SigKill);
        await ProcessTable.WaitGoneAsync([coordinator], n => n.Alive, TimeSpan.FromSeconds(10));
        var again = await CliProcess.RunAsync(null, "local", "up", "--data-dir", _dataDirectory, "--api-port", "0", "--fast-timings");
        Assert.True(again.ExitCode == 0, again.ToString());
        // back on a fresh cluster port, joined once a running member (a host) downed and removed its crashed incarnation
        // at its request (PredecessorDowning, PredecessorWatch)
        var replacement = (await LocalClusterState.ReadAsync(_dataDirectory))!.Nodes.Single(n => n.Name == "coordinator");
        Assert.NotEqual(coordinator.Port, replacement.Port);
        Assert.Contains($"The predecessor {coordinator.Address} is downed and removed by a running member; joining",
            await File.ReadAllTextAsync(Path.Combine(_dataDirectory, "logs", "coordinator.log")));
        Assert.Contains($"Downing {coordinator.Address}", string.Join("\n",
            await Task.WhenAll(Directory.EnumerateFiles(Path.Combine(_dataDirectory, "logs"), "host-*.log").Select(f => File.ReadAllTextAsync(f)))));

        var migrated = await migrating;

        Assert.True(migrated.ExitCode == 0, migrated + "\n" + LocalClusterLauncher.LogTails(Path.Combine(_dataDirectory, "logs")));
        Assert.Contains("reconnecting", migrated.Stderr);
        Assert.Contains("completed", migrated.Stdout);

        // the audit trail survived the SIGKILL: every change asked before it is listed with the answer it got
        var audit = await CliProcess.RunAsync(api, "audit", "--json");
        Assert.True(audit.ExitCode == 0, audit.ToString());
        var entries = System.Text.Json.JsonDocument.Parse(audit.Stdout).RootElement.GetProperty("entries").EnumerateArray()
            .Select(e => (Path: e.GetProperty("path").GetString()!, Status: e.GetProperty("status").ValueKind == System.Text.Json.JsonValueKind.Number ? e.GetProperty("status").GetInt32() : 0))
            .Reverse().ToList();
        Assert.Equal(["/api/domains", "/api/domains", "/api/vms"], entries.Take(3).Select(e => e.Path));
        Assert.EndsWith("/io", entries[3].Path);
        Assert.Equal("/api/migrations", entries[4].Path);
        Assert.All(entries.Take(5), e => Assert.InRange(e.Status, 200, 299));
    }

    [Fact]
    public async Task Down_and_status_with_nothing_running_say_so_and_exit_zero()
    {
        var down = await CliProcess.RunAsync(null, "local", "down", "--data-dir", _dataDirectory);
        Assert.True(down.ExitCode == 0, down.ToString());
        Assert.Contains("nothing runs", down.Stdout);

        var status = await CliProcess.RunAsync(null, "local", "status", "--data-dir", _dataDirectory);
        Assert.True(status.ExitCode == 0, status.ToString());
        Assert.Contains("no local cluster", status.Stdout);
    }

    [Fact]
    public async Task Up_refuses_bad_options_before_starting_anything()
    {
        var hosts = await CliProcess.RunAsync(null, "local", "up", "--hosts", "0", "--data-dir", _dataDirectory);
        Assert.True(hosts.ExitCode == ExitCodes.BadUsage, hosts.ToString());
        Assert.Contains("--hosts", hosts.Stderr);

        var journal = await CliProcess.RunAsync(null, "local", "up", "--journal", "mysql://x", "--data-dir", _dataDirectory);
        Assert.True(journal.ExitCode == ExitCodes.BadUsage, journal.ToString());
        Assert.Contains("--journal", journal.Stderr);
        Assert.False(File.Exists(LocalClusterState.PathIn(_dataDirectory)), "a refused up wrote a state file");
    }

    [Fact]
    public void A_postgres_uri_journal_becomes_an_npgsql_connection_string()
    {
        Assert.Null(LocalClusterLauncher.PostgresConnection("sqlite"));
        Assert.Equal("Host=127.0.0.1;Port=5433;Database=lsm;Username=ops;Password=p@ss",
            LocalClusterLauncher.PostgresConnection("postgres://ops:p%40ss@127.0.0.1:5433/lsm"));
        Assert.Equal("Host=db;Port=5432;Database=lsm", LocalClusterLauncher.PostgresConnection("postgresql://db/lsm"));
        Assert.Equal("Host=db;Database=lsm", LocalClusterLauncher.PostgresConnection("Host=db;Database=lsm"));
        Assert.Throws<CliFailure>(() => LocalClusterLauncher.PostgresConnection("postgres://db"));
    }

    /// <summary>Field 6 of /proc/PID/stat: the session id.</summary>
    private static string SessionId(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        return stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[3];
    }

    private static async Task<int> StartIdleQemuAsync(string pidFile)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(pidFile)!);
        var psi = new ProcessStartInfo("qemu-system-x86_64") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { "-machine", "none", "-display", "none", "-daemonize", "-pidfile", pidFile }) psi.ArgumentList.Add(a);
        using var qemu = Process.Start(psi)!;
        var stderr = qemu.StandardError.ReadToEndAsync();
        await qemu.StandardOutput.ReadToEndAsync();
        await qemu.WaitForExitAsync();
        Assert.True(qemu.ExitCode == 0, $"qemu did not start: {await stderr}");
        var pid = int.Parse((await File.ReadAllTextAsync(pidFile)).Trim());
        Assert.True(Directory.Exists($"/proc/{pid}"));
        return pid;
    }
}
