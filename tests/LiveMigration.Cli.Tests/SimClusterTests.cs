using System.Text.Json;
using LiveMigration.Cli.Local;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// <c>lsm local up --hypervisor sim</c>, as someone trying scale on one machine types it: the hosts are in-memory sim hosts
/// in one process, each still a cluster member of its own, driven through the same CLI and API as real ones.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class SimClusterTests : IAsyncLifetime
{
    private readonly LocalClusterSession _cluster = new() { UpArguments = ["--hypervisor", "sim"] };

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task Sim_hosts_run_in_one_process_as_cluster_members_and_move_disks_through_the_same_cli()
    {
        await _cluster.UpAsync();
        var state = (await LocalClusterState.ReadAsync(_cluster.DataDirectory))!;
        Assert.Equal(new[] { "coordinator", LocalClusterOptions.SimHostsNode }, state.Nodes.Select(n => n.Name));
        Assert.Equal(new[] { "host-1", "host-2" }, state.HostIds);
        var members = (await _cluster.Json("cluster", "show")).GetProperty("members").EnumerateArray().ToList();
        Assert.Equal(3, members.Count(m => m.GetProperty("status").GetString() == "up"));
        var hosts = (await _cluster.Json("hosts")).GetProperty("hosts").EnumerateArray().ToList();
        Assert.Equal(new[] { "host-1", "host-2" }, hosts.Select(h => h.GetProperty("hostId").GetString()).Order());
        Assert.Single(hosts, h => h.GetProperty("spm").GetBoolean());

        await _cluster.Ok("domain", "create", "a", "--path", _cluster.Storage, "--capacity", "100GiB");
        await _cluster.Ok("domain", "create", "b", "--path", _cluster.Storage, "--capacity", "100GiB");
        // sim domains are memory, not folders: nothing is written under the storage root
        Assert.Empty(Directory.EnumerateFileSystemEntries(_cluster.Storage));
        await _cluster.Ok("vm", "create", "v1", "--host", "host-2", "--disk", "10GiB@a:snapshots=2", "--disk", "1GiB@a");

        await _cluster.Ok("migrate", "v1", "--to", "b", "--wait");
        await AssertChainsOnAsync("b", [1, 3]);
        await _cluster.Ok("migrate", "v1", "--to", "a", "--strategy", "post-copy", "--wait");
        await AssertChainsOnAsync("a", [2, 4]);

        // a sim disk is a size, not data: guest I/O is refused with the reason, and nothing changes
        var io = await _cluster.Lsm("vm", "io", "v1", "--rate", "1MiB/s", "--seconds", "1");
        Assert.NotEqual(0, io.ExitCode);
        Assert.Contains("sim host host-2", io.Stderr);

        // The Coordinator dies: up restarts it alone, the sim hosts (and the VMs and domains in their memory) run on.
        var coordinator = state.Nodes.Single(n => n.Name == "coordinator");
        ProcessTable.Signal(coordinator.Pid, ProcessTable.SigKill);
        await ProcessTable.WaitGoneAsync([coordinator.Pid], pid => ProcessTable.IsAlive(pid, coordinator.StartTime), TimeSpan.FromSeconds(10));
        await _cluster.UpAsync();
        await _cluster.Ok("migrate", "v1", "--to", "b", "--wait");
        await AssertChainsOnAsync("b", [2, 4]);

        // The sim hosts die: their state died with them, and up says so instead of starting empty hosts under old VMs.
        var simHosts = state.Nodes.Single(n => n.Name == LocalClusterOptions.SimHostsNode);
        ProcessTable.Signal(simHosts.Pid, ProcessTable.SigKill);
        await ProcessTable.WaitGoneAsync([simHosts.Pid], pid => ProcessTable.IsAlive(pid, simHosts.StartTime), TimeSpan.FromSeconds(10));
        var again = await CliProcess.RunAsync(null, "local", "up", "--data-dir", _cluster.DataDirectory, "--hypervisor", "sim", "--api-port", "0");
        Assert.Equal(2, again.ExitCode);
        Assert.Contains("lived in their memory", again.Stderr);

        var down = await CliProcess.RunAsync(null, "local", "down", "--data-dir", _cluster.DataDirectory);
        Assert.True(down.ExitCode == 0, down.ToString());
        Assert.All((await LocalClusterState.ReadAsync(_cluster.DataDirectory))!.Nodes, n => Assert.False(n.Alive, $"{n.Name} pid {n.Pid} runs after down"));
    }

    /// <summary>Every layer of every disk of v1 on the domain, and the disks' chain lengths.</summary>
    private async Task AssertChainsOnAsync(string domain, int[] chainLengths)
    {
        var domainId = (await _cluster.Json("domains")).GetProperty("domains").EnumerateArray()
            .Single(d => d.GetProperty("name").GetString() == domain).GetProperty("id").GetString();
        var disks = (await _cluster.Json("vm", "show", "v1")).GetProperty("disks").EnumerateArray().ToList();
        Assert.All(disks, d => Assert.All(d.GetProperty("chain").EnumerateArray(),
            layer => Assert.Equal(domainId, layer.GetProperty("domain").GetString())));
        Assert.Equal(chainLengths, disks.Select(d => d.GetProperty("chain").GetArrayLength()).Order());
    }
}
