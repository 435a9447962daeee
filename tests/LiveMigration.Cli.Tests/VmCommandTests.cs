using System.Text.Json;
using LiveMigration.Cli.Local;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Processes;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// The management commands run as an operator would, against a real Coordinator and a HostNode with QEMU: a domain
/// made at runtime, a VM created on it with a chain, guest I/O and its verification, a live snapshot, stop and start.
/// </summary>
public sealed class VmCommandTests(VmClusterFixture cluster) : IClassFixture<VmClusterFixture>
{
    private Task<CliResult> Lsm(params string[] arguments) => CliProcess.RunAsync(cluster.Api, arguments);

    private async Task<JsonElement> JsonOf(params string[] arguments)
    {
        var result = await Lsm([.. arguments, "--json"]);
        Assert.True(result.ExitCode == 0, result + "\n" + cluster.LogTails());
        return JsonDocument.Parse(result.Stdout).RootElement;
    }

    private static int[] ChainLengths(JsonElement vm) =>
        vm.GetProperty("disks").EnumerateArray().Select(d => d.GetProperty("chain").GetArrayLength()).Order().ToArray();

    [Fact]
    public async Task A_vm_is_created_on_a_new_domain_writes_verifies_snapshots_stops_and_starts_again()
    {
        var created = await Lsm("domain", "create", "fast", "--path", cluster.SharedStorage, "--capacity", "2GiB");
        Assert.True(created.ExitCode == 0, created + "\n" + cluster.LogTails());
        var fast = Assert.Single((await JsonOf("domains")).GetProperty("domains").EnumerateArray(), d => d.GetProperty("name").GetString() == "fast");
        Assert.Equal(2L << 30, fast.GetProperty("capacityBytes").GetInt64());
        var fastId = fast.GetProperty("id").GetString()!;

        var host = Assert.Single((await JsonOf("hosts")).GetProperty("hosts").EnumerateArray());
        Assert.True(host.GetProperty("spm").GetBoolean());
        Assert.Contains("SPM", (await Lsm("hosts")).Stdout);

        // one disk by domain name with two snapshots (3 volumes), one by domain id without
        var create = await Lsm("vm", "create", "web", "--host", "host-1", "--disk", "64MiB@fast:snapshots=2", "--disk", $"32MiB@{fastId}");
        Assert.True(create.ExitCode == 0, create + "\n" + cluster.LogTails());
        var vm = await JsonOf("vm", "show", "web");
        Assert.True(vm.GetProperty("running").GetBoolean());
        Assert.Equal("host-1", vm.GetProperty("host").GetString());
        Assert.Equal(new[] { 1, 3 }, ChainLengths(vm));
        Assert.All(vm.GetProperty("disks").EnumerateArray(), d =>
        {
            Assert.Equal(fastId, d.GetProperty("domain").GetString());
            Assert.All(d.GetProperty("chain").EnumerateArray(), l => Assert.Equal(fastId, l.GetProperty("domain").GetString()));
        });
        var vmId = vm.GetProperty("id").GetString()!;
        var shown = await Lsm("vm", "show", vmId);
        Assert.Contains("(leaf)", shown.Stdout);
        Assert.Contains("fast", shown.Stdout);

        var io = await Lsm("vm", "io", "web", "--rate", "8MiB/s", "--seconds", "2", "--flush-interval", "200ms");
        Assert.True(io.ExitCode == 0, io + "\n" + cluster.LogTails());
        Assert.Contains("flushing every 200 ms", io.Stdout);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        JsonElement status;
        do
        {
            await Task.Delay(500);
            status = await JsonOf("vm", "io", "web", "--status");
        } while (status.GetProperty("running").GetBoolean() && DateTime.UtcNow < deadline);
        Assert.False(status.GetProperty("running").GetBoolean(), status.ToString());
        Assert.True(status.GetProperty("writes").GetInt64() > 0, status.ToString());
        Assert.Equal(0, status.GetProperty("errors").GetInt64());
        // it stopped by itself, with a last flush: every acknowledged write is durable, after flushes every 200 ms
        Assert.Equal(status.GetProperty("writes").GetInt64(), status.GetProperty("durableWrites").GetInt64());
        Assert.Equal(200, status.GetProperty("flushIntervalMs").GetInt32());
        Assert.True(status.GetProperty("flushes").GetInt64() >= 2 * 5, status.ToString()); // 2 drives, about 10 flushes each

        var verify = await Lsm("vm", "verify", "web");
        Assert.True(verify.ExitCode == 0, verify + "\n" + cluster.LogTails());
        Assert.Contains("lost: 0; in doubt: 0", verify.Stdout);
        var verified = await JsonOf("vm", "verify", "web");
        Assert.True(verified.GetProperty("ok").GetBoolean());
        Assert.True(verified.GetProperty("checked").GetInt64() > 0, verified.ToString());
        Assert.Equal(verified.GetProperty("checked").GetInt64(), verified.GetProperty("durableChecked").GetInt64());
        Assert.Equal(0, verified.GetProperty("lost").GetInt64());
        Assert.Equal(0, verified.GetProperty("inDoubt").GetInt64());

        var snapshot = await Lsm("vm", "snapshot", "web");
        Assert.True(snapshot.ExitCode == 0, snapshot + "\n" + cluster.LogTails());
        Assert.Equal(new[] { 2, 4 }, ChainLengths(await JsonOf("vm", "show", "web")));

        var stop = await Lsm("vm", "stop", "web");
        Assert.True(stop.ExitCode == 0, stop + "\n" + cluster.LogTails());
        var listed = Assert.Single((await JsonOf("vms")).GetProperty("vms").EnumerateArray(), v => v.GetProperty("id").GetString() == vmId);
        Assert.False(listed.GetProperty("running").GetBoolean());
        Assert.Equal(new[] { 2, 4 }, ChainLengths(listed));
        // stopped: the writes are read back from the chain on disk
        var offline = await JsonOf("vm", "verify", "web");
        Assert.True(offline.GetProperty("ok").GetBoolean(), offline.ToString());
        Assert.Equal(verified.GetProperty("checked").GetInt64(), offline.GetProperty("checked").GetInt64());

        var start = await Lsm("vm", "start", "web");
        Assert.True(start.ExitCode == 0, start + "\n" + cluster.LogTails());
        var restarted = await JsonOf("vm", "show", "web");
        Assert.True(restarted.GetProperty("running").GetBoolean());
        Assert.Equal(new[] { 2, 4 }, ChainLengths(restarted));
        Assert.Equal(0, (await Lsm("vm", "verify", "web")).ExitCode);
    }

    [Fact]
    public async Task Bad_input_is_refused_with_exit_2_and_a_message_and_changes_nothing()
    {
        var tiny = await Lsm("domain", "create", "tiny", "--path", cluster.SharedStorage, "--capacity", "64MiB");
        Assert.True(tiny.ExitCode == 0, tiny + "\n" + cluster.LogTails());
        var before = await JsonOf("vms");

        var noHost = await Lsm("vm", "create", "x", "--host", "host-9", "--disk", "16MiB@tiny");
        Assert.Equal(2, noHost.ExitCode);
        Assert.Contains("no host 'host-9'", noHost.Stderr);

        var noDomain = await Lsm("vm", "create", "x", "--host", "host-1", "--disk", "16MiB@nowhere");
        Assert.Equal(2, noDomain.ExitCode);
        Assert.Contains("no storage domain named 'nowhere'", noDomain.Stderr);

        var tooBig = await Lsm("vm", "create", "x", "--host", "host-1", "--disk", "48MiB@tiny", "--disk", "48MiB@tiny");
        Assert.Equal(2, tooBig.ExitCode);
        Assert.Contains("NOT_ENOUGH_SPACE", tooBig.Stderr);
        Assert.Contains("bytes available", tooBig.Stderr);
        Assert.Contains("need 100663296 bytes", tooBig.Stderr);

        var badSpec = await Lsm("vm", "create", "x", "--host", "host-1", "--disk", "lots@tiny");
        Assert.Equal(2, badSpec.ExitCode);
        Assert.Contains("is not a size", badSpec.Stderr);

        var noVm = await Lsm("vm", "stop", "no-such-vm");
        Assert.Equal(2, noVm.ExitCode);
        Assert.Contains("no VM named 'no-such-vm'", noVm.Stderr);

        var twice = await Lsm("domain", "create", "tiny", "--path", cluster.SharedStorage);
        Assert.Equal(2, twice.ExitCode);
        Assert.Contains("exists already", twice.Stderr);

        var noRate = await Lsm("vm", "io", "no-such-vm");
        Assert.Equal(2, noRate.ExitCode);
        Assert.Contains("--rate", noRate.Stderr);

        var bareInterval = await Lsm("vm", "io", "no-such-vm", "--rate", "1MiB/s", "--flush-interval", "5");
        Assert.Equal(2, bareInterval.ExitCode);
        Assert.Contains("--flush-interval '5'", bareInterval.Stderr);

        // nothing was made: the same VMs, and the tiny domain holds nothing
        Assert.Equal(before.GetProperty("vms").GetArrayLength(), (await JsonOf("vms")).GetProperty("vms").GetArrayLength());
        var tinyNow = Assert.Single((await JsonOf("domains")).GetProperty("domains").EnumerateArray(), d => d.GetProperty("name").GetString() == "tiny");
        Assert.Equal(0, tinyNow.GetProperty("usedBytes").GetInt64());
    }

    [Fact]
    public async Task A_domain_created_at_runtime_and_a_stopped_vm_survive_a_host_restart()
    {
        var root = Path.Combine(cluster.SharedStorage, "durable-root");
        Assert.Equal(0, (await Lsm("domain", "create", "durable", "--path", root, "--capacity", "256MiB")).ExitCode);
        var create = await Lsm("vm", "create", "keeper", "--host", "host-1", "--disk", "16MiB@durable:snapshots=1");
        Assert.True(create.ExitCode == 0, create + "\n" + cluster.LogTails());
        Assert.Equal(0, (await Lsm("vm", "stop", "keeper")).ExitCode);
        var addressBefore = Assert.Single((await JsonOf("hosts")).GetProperty("hosts").EnumerateArray()).GetProperty("address").GetString();

        // Stopped (SIGTERM: it leaves the cluster, so two nodes need no downing decision) and started again: the new
        // process finds the domain from the root it remembered and the VM from its catalog.
        var node = cluster.Cluster.Nodes.Single(n => n.Name == "host-1");
        await LocalCluster.StopAsync([node], TimeSpan.FromSeconds(30));
        await cluster.Cluster.RestartAsync(node);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            var hosts = await Lsm("hosts", "--json");
            if (hosts.ExitCode == 0 && JsonDocument.Parse(hosts.Stdout).RootElement.GetProperty("hosts").EnumerateArray()
                    .Any(h => h.GetProperty("spm").GetBoolean() && h.GetProperty("address").GetString() != addressBefore)) break;
            Assert.True(DateTime.UtcNow < deadline, "host-1 did not come back as the SPM within 60 s\n" + cluster.LogTails());
            await Task.Delay(500);
        }

        Assert.Contains((await JsonOf("domains")).GetProperty("domains").EnumerateArray(), d => d.GetProperty("name").GetString() == "durable");
        var keeper = await JsonOf("vm", "show", "keeper");
        Assert.False(keeper.GetProperty("running").GetBoolean());
        Assert.Equal(new[] { 2 }, ChainLengths(keeper));
        var start = await Lsm("vm", "start", "keeper");
        Assert.True(start.ExitCode == 0, start + "\n" + cluster.LogTails());
        Assert.True((await JsonOf("vm", "show", "keeper")).GetProperty("running").GetBoolean());
    }

    [Fact]
    public async Task Guest_writes_made_during_a_migration_between_runtime_domains_all_verify()
    {
        var root = Path.Combine(cluster.SharedStorage, "move-root");
        await CreateDomainsAsync(root, "512MiB", "move-src", "move-dst");
        var create = await Lsm("vm", "create", "mover", "--host", "host-1", "--disk", "32MiB@move-src:snapshots=1");
        Assert.True(create.ExitCode == 0, create + "\n" + cluster.LogTails());
        var vm = await JsonOf("vm", "show", "mover");
        var dst = await DomainIdAsync("move-dst");

        Assert.Equal(0, (await Lsm("vm", "io", "mover", "--rate", "4MiB/s", "--fua")).ExitCode);
        var migrate = await Lsm("migrate", vm.GetProperty("id").GetString()!, "--to", "move-dst", "--wait");
        Assert.True(migrate.ExitCode == 0, migrate + "\n" + cluster.LogTails());

        var moved = await JsonOf("vm", "show", "mover");
        Assert.All(moved.GetProperty("disks").EnumerateArray(), d =>
        {
            Assert.Equal(dst, d.GetProperty("domain").GetString());
            Assert.Equal(JsonValueKind.Null, d.GetProperty("migration").ValueKind);
        });
        var io = await JsonOf("vm", "io", "mover", "--status");
        Assert.True(io.GetProperty("running").GetBoolean(), io.ToString());
        Assert.Equal(0, io.GetProperty("errors").GetInt64());
        Assert.True(io.GetProperty("fua").GetBoolean(), io.ToString());
        // with FUA a write is durable when acknowledged (the ledger counts it a moment before the workload's counter)
        Assert.True(io.GetProperty("durableWrites").GetInt64() >= io.GetProperty("writes").GetInt64(), io.ToString());
        Assert.Equal(0, io.GetProperty("flushes").GetInt64());
        var verified = await JsonOf("vm", "verify", "mover");
        Assert.True(verified.GetProperty("ok").GetBoolean(), verified.ToString());
        Assert.True(verified.GetProperty("checked").GetInt64() > 0, verified.ToString());
        Assert.Equal(0, (await Lsm("vm", "stop", "mover")).ExitCode);
    }

    [Fact]
    public async Task A_guest_that_outruns_its_background_mirror_is_converged_by_its_host_and_the_migration_says_so()
    {
        var root = Path.Combine(cluster.SharedStorage, "dirty-root");
        await CreateDomainsAsync(root, "512MiB", "dirty-src", "dirty-dst");
        var create = await Lsm("vm", "create", "dirty", "--host", "host-1", "--disk", "32MiB@dirty-src:snapshots=1");
        Assert.True(create.ExitCode == 0, create + "\n" + cluster.LogTails());
        var vm = (await JsonOf("vm", "show", "dirty")).GetProperty("id").GetString()!;
        // the guest dirties 8 MiB/s, the mirror may copy 4 MiB/s: a background mirror never catches up by itself
        Assert.Equal(0, (await Lsm("vm", "io", "dirty", "--rate", "8MiB/s")).ExitCode);
        await AwaitAsync(async () => (await JsonOf("vm", "io", "dirty", "--status")).GetProperty("writes").GetInt64() > 1000, "the guest's first writes");

        var migrate = await Lsm("migrate", vm, "--to", "dirty-dst", "--bandwidth", "4MiB/s", "--copy-mode", "background", "--wait");
        Assert.True(migrate.ExitCode == 0, migrate + "\n" + cluster.LogTails());
        var id = System.Text.RegularExpressions.Regex.Match(migrate.Stdout, @"migration (\S+) started").Groups[1].Value;
        // piped, --wait writes a line per change: the disk's bytes copied and left, and the time left, as the copy goes
        var lines = migrate.Stdout.Split('\n');
        Assert.Contains(lines, l => System.Text.RegularExpressions.Regex.IsMatch(l, @" running: .* copied, .* left, [0-9]+\.[0-9] s"));
        Assert.Contains("did not converge", migrate.Stdout); // the final table's note
        var shown = await JsonOf("migration", "show", id);
        Assert.True(shown.GetProperty("status").GetString() == "completed", shown.ToString());
        // the host said what it did and why, with the rates, in the wait's outcome that every reader sees
        var wait = Assert.Single(shown.GetProperty("disks")[0].GetProperty("timings").EnumerateArray(),
            t => t.GetProperty("step").GetString() == "WaitMirrorReady");
        var note = wait.GetProperty("note").GetString();
        Assert.True(note is not null && note.Contains("did not converge") && note.Contains("started again write-blocking"), wait.ToString());
        var table = await Lsm("migration", "show", id);
        Assert.Contains("did not converge", table.Stdout);
        Assert.Contains($"dirty ({vm})", table.Stdout); // the VM by its name, with its id
        var listed = await Lsm("migrations");
        Assert.Contains(listed.Stdout.Split('\n'), l => l.Contains(id) && l.Contains("dirty"));
        // narrowed to the VM by its name, and to a status
        var ofVm = await JsonOf("migrations", "--vm", "dirty", "--status", "completed");
        Assert.Equal([id], ofVm.GetProperty("migrations").EnumerateArray().Select(m => m.GetProperty("id").GetString()));
        var byId = await JsonOf("migrations", "--vm", vm); // an id is passed as it is, also for a VM the inventory no longer has
        Assert.Equal([id], byId.GetProperty("migrations").EnumerateArray().Select(m => m.GetProperty("id").GetString()));
        Assert.Empty((await JsonOf("migrations", "--vm", "dirty", "--status", "running")).GetProperty("migrations").EnumerateArray());
        var bogus = await Lsm("migrations", "--status", "moving");
        Assert.True(bogus.ExitCode == 2 && bogus.Stderr.Contains("--status must be one of"), bogus.ToString());
        var nobody = await Lsm("migrations", "--vm", "no-such-vm");
        Assert.True(nobody.ExitCode != 0 && nobody.Stderr.Contains("no-such-vm"), nobody.ToString());
        var moved = await JsonOf("vm", "show", "dirty");
        Assert.Equal(await DomainIdAsync("dirty-dst"), moved.GetProperty("disks")[0].GetProperty("domain").GetString());
        var io = await JsonOf("vm", "io", "dirty", "--status");
        Assert.True(io.GetProperty("running").GetBoolean() && io.GetProperty("errors").GetInt64() == 0, io.ToString());
        var verified = await JsonOf("vm", "verify", "dirty");
        Assert.True(verified.GetProperty("ok").GetBoolean(), verified.ToString());
        Assert.Equal(0, (await Lsm("vm", "stop", "dirty")).ExitCode);
    }

    [Fact]
    public async Task A_vm_whose_QEMU_dies_during_a_slow_pre_copy_fails_it_at_once_and_starts_again_on_its_source()
    {
        var root = Path.Combine(cluster.SharedStorage, "crash-root");
        await CreateDomainsAsync(root, "512MiB", "crash-src", "crash-dst");
        var create = await Lsm("vm", "create", "crasher", "--host", "host-1", "--disk", "32MiB@crash-src:snapshots=1");
        Assert.True(create.ExitCode == 0, create + "\n" + cluster.LogTails());
        var vmId = (await JsonOf("vm", "show", "crasher")).GetProperty("id").GetString()!;
        var image = (await JsonOf("vm", "show", "crasher")).GetProperty("disks")[0].GetProperty("image").GetString()!;
        var dst = await DomainIdAsync("crash-dst");
        // data in a layer that a snapshot then makes internal: the SPM's copy of it at 32 KiB/s takes minutes
        Assert.Equal(0, (await Lsm("vm", "io", "crasher", "--rate", "8MiB/s", "--seconds", "1")).ExitCode);
        await AwaitAsync(async () => !(await JsonOf("vm", "io", "crasher", "--status")).GetProperty("running").GetBoolean(), "the guest's writes to end");
        Assert.Equal(0, (await Lsm("vm", "snapshot", "crasher")).ExitCode);

        var started = await JsonOf("migrate", "crasher", "--to", "crash-dst", "--bandwidth", "64k");
        var id = started.GetProperty("id").GetString()!;
        await AwaitAsync(async () =>
        {
            var disk = (await JsonOf("migration", "show", id)).GetProperty("disks")[0];
            return disk.GetProperty("step").GetString() == "SyncInternalVolumes" && disk.GetProperty("done").GetInt64() > 0;
        }, "the copy of the internal layers to run");
        var pidFile = Path.Combine(cluster.Cluster.HostRunDirectory("host-1"), "vms", $"{vmId}.pid");
        var qemu = int.Parse(File.ReadAllText(pidFile).Trim());
        Assert.True(ProcessSignals.Send(qemu, 9), $"QEMU {qemu} could not be killed");

        // The host reports the VM stopped; the saga fails the pre-copy, stops the copy and undoes it.
        JsonElement end = default;
        await AwaitAsync(async () => (end = await JsonOf("migration", "show", id)).GetProperty("finished").GetBoolean(), "the migration to end");
        Assert.Equal($"failed ({ErrorCodes.VmNotRunning})", end.GetProperty("status").GetString());
        Assert.Contains("stopped on host host-1 during the pre-copy", end.GetProperty("error").GetString());
        var timings = end.GetProperty("disks")[0].GetProperty("timings").EnumerateArray()
            .Select(t => (Step: t.GetProperty("step").GetString(), Outcome: t.GetProperty("outcome").GetString())).ToList();
        Assert.Contains(("SyncInternalVolumes", $"failed {ErrorCodes.StepStopped}"), timings);
        Assert.Equal(("DeleteDestinationImage", "completed"), timings[^1]);
        var src = await DomainIdAsync("crash-src");
        Assert.True(Directory.Exists(Path.Combine(root, src, "images", image)), "the source chain is not where the test looks");
        Assert.False(Directory.Exists(Path.Combine(root, dst, "images", image)), "the copy is left on the destination");

        // Its disks are free again: it starts on its source chain and lost nothing it flushed.
        var start = await Lsm("vm", "start", "crasher");
        Assert.True(start.ExitCode == 0, start + "\n" + cluster.LogTails());
        var verified = await JsonOf("vm", "verify", "crasher");
        Assert.True(verified.GetProperty("ok").GetBoolean(), verified.ToString());
        Assert.Equal(0, verified.GetProperty("lost").GetInt64());
        Assert.Equal(0, (await Lsm("vm", "stop", "crasher")).ExitCode);
    }

    /// <summary>Domains made at runtime in folders below <paramref name="root"/>, each of <paramref name="capacity"/>.</summary>
    private async Task CreateDomainsAsync(string root, string capacity, params string[] names)
    {
        foreach (var name in names)
        {
            var created = await Lsm("domain", "create", name, "--path", root, "--capacity", capacity);
            Assert.True(created.ExitCode == 0, created + "\n" + cluster.LogTails());
        }
    }

    private async Task<string> DomainIdAsync(string name) =>
        Assert.Single((await JsonOf("domains")).GetProperty("domains").EnumerateArray(), d => d.GetProperty("name").GetString() == name)
            .GetProperty("id").GetString()!;

    private async Task AwaitAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"waited 60 s for {what}\n{cluster.LogTails()}");
            await Task.Delay(200);
        }
    }

    [Fact]
    public async Task Migrate_moves_only_the_disks_not_on_the_destination_yet_and_says_which_it_skipped()
    {
        var root = Path.Combine(cluster.SharedStorage, "part-root");
        await CreateDomainsAsync(root, "256MiB", "part-src", "part-dst");
        // as after a move that failed part-way: one disk is on the destination already, the other is not
        var create = await Lsm("vm", "create", "halfway", "--host", "host-1", "--disk", "16MiB@part-src:snapshots=1", "--disk", "16MiB@part-dst:snapshots=1");
        Assert.True(create.ExitCode == 0, create + "\n" + cluster.LogTails());
        var vm = await JsonOf("vm", "show", "halfway");
        var dst = await DomainIdAsync("part-dst");
        var already = vm.GetProperty("disks").EnumerateArray().Single(d => d.GetProperty("domain").GetString() == dst).GetProperty("image").GetString()!;

        var migrate = await Lsm("migrate", "halfway", "--to", "part-dst", "--wait");

        Assert.True(migrate.ExitCode == 0, migrate + "\n" + cluster.LogTails());
        Assert.Contains($"skipped disk {already}", migrate.Stdout);
        Assert.All((await JsonOf("vm", "show", "halfway")).GetProperty("disks").EnumerateArray(), d => Assert.Equal(dst, d.GetProperty("domain").GetString()));
        // the migration's tables: bytes copied and left (no percentage that a growing mirror could pull back), each step once
        Assert.Contains("Copied", migrate.Stdout);
        Assert.DoesNotContain("%", migrate.Stdout);

        // everything is there: nothing to move, said so, exit 0 (a script may repeat a move)
        var again = await Lsm("migrate", "halfway", "--to", "part-dst");
        Assert.True(again.ExitCode == 0, again.ToString());
        Assert.Contains("nothing to move", again.Stdout);
        var json = await JsonOf("migrate", "halfway", "--to", "part-dst");
        Assert.Equal(JsonValueKind.Null, json.GetProperty("id").ValueKind);
        Assert.Equal(2, json.GetProperty("skipped").GetArrayLength());
        Assert.Equal(0, (await Lsm("vm", "stop", "halfway")).ExitCode);
    }
}

