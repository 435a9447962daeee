using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Hypervisor.Libvirt;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.HostNode.Tests.Contract.Real;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Libvirt;

/// <summary>What only the libvirt adapter has: hosts sharing one libvirtd, and the backing switch's own recovery.</summary>
[Collection(LibvirtCollection.Name)]
public sealed class LibvirtHypervisorTests(LibvirtDaemonFixture daemon) : IAsyncLifetime
{
    private readonly LibvirtDaemonFixture _daemon = daemon;
    private readonly string _root = FileLayerData.NewShortRoot();
    private readonly List<LibvirtHypervisor> _hypervisors = [];
    private FileStorageDomain _a = null!;
    private FileStorageDomain _b = null!;
    private StoragePool _pool = null!;

    public async Task InitializeAsync()
    {
        GC.KeepAlive(_daemon);
        Directory.CreateDirectory(_root);
        _a = await FileStorageDomain.CreateAsync(Path.Combine(_root, "sd"), DomainId.New(), "file-a", 1L << 30);
        _b = await FileStorageDomain.CreateAsync(Path.Combine(_root, "sd"), DomainId.New(), "file-b", 1L << 30);
        _pool = new StoragePool([_a, _b]);
    }

    [Fact]
    public async Task Two_hosts_on_one_libvirtd_adopt_only_their_own_domains_and_cannot_take_the_others()
    {
        var host1 = Host("host-1");
        var host2 = Host("host-2");
        var chain = await ChainSeeder.SeedAsync(_a, FileLayerData.WriteAsync);
        var vm = await host1.StartVmAsync(new VmSpec(VmId.New(), "one", [await _pool.ResolveChainAsync(_a.Id, chain.Image)]));

        Assert.DoesNotContain(await host2.AdoptRunningVmsAsync(), v => v.Id == vm.Id);
        await ContractAssert.FailsWithAsync(ErrorCodes.Conflict, () => host2.StartVmAsync(
            new VmSpec(vm.Id, "one", [new DriveChain(chain.Image, [chain.LayerOn(_a, chain.Leaf)])])));
        await ContractAssert.FailsWithAsync(ErrorCodes.VmNotFound, () => host2.DescribeVmAsync(vm.Id));

        var restarted = Host("host-1");
        Assert.Equal(vm.Id, Assert.Single(await restarted.AdoptRunningVmsAsync(), v => v.Id == vm.Id).Id);
        await restarted.StopVmAsync(vm.Id);
        await ContractAssert.FailsWithAsync(ErrorCodes.VmNotRunning, () => host1.DescribeVmAsync(vm.Id));
    }

    [Fact]
    public async Task A_backing_switch_that_stopped_before_its_copy_is_put_right_by_the_next_call_and_keeps_the_guests_writes()
    {
        var (hypervisor, chain, vm, newLeaf, written) = await WritingOnANewLeafAsync(pattern: 7);
        await _b.CloneImageStructureAsync(_a, chain.Image, TestOwners.Default);
        foreach (var id in chain.Ids) await _b.CopyVolumeDataAsync(_a, chain.Image, id);
        await _b.SetParentAsync(chain.Image, newLeaf, new VolumeRef(_b.Id, chain.Leaf), _b, rewriteHeader: false);

        // As a host that died in the middle of a switch leaves it: the running layer linked aside, an empty overlay at its path.
        var leafPath = await LeaveASwitchHalfDoneAsync(chain, newLeaf);

        var newBacking = chain.Ids.Select(id => chain.LayerOn(_b, id)).ToList();
        var restarted = Host("host-1", guestExport: true);
        Assert.Contains(await restarted.AdoptRunningVmsAsync(), v => v.Id == vm.Id);
        var switched = await restarted.SwitchBackingChainAsync(vm.Id, chain.Image, newBacking);

        Assert.Equal(chain.PathsOn(_b, chain.Base, chain.Middle, chain.Leaf, newLeaf), switched.OpenChain);
        Assert.NotNull(switched.SwitchDuration); // its pivot, timed by the adapter
        Assert.False(File.Exists(leafPath + ".lsm-switch"));
        Assert.Equal(written, await ReadBackAsync(switched));
        Assert.Equal(chain.PathsOn(_b, chain.Base, chain.Middle, chain.Leaf, newLeaf), (await _pool.ResolveChainAsync(_b.Id, chain.Image)).Layers.Select(l => l.Path));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_VM_whose_QEMU_died_in_a_backing_switch_starts_on_the_layer_it_wrote_or_not_at_all_when_the_pivot_is_in_doubt(bool pivotAsked)
    {
        var (hypervisor, chain, vm, newLeaf, written) = await WritingOnANewLeafAsync(pattern: 13);

        // As a switch leaves it when its QEMU (and host) died during the copy: the layer QEMU wrote linked aside, a
        // fresh overlay of the new backing (without the guest's writes) at its path; with the pivot mark if the pivot was asked for.
        var leafPath = await LeaveASwitchHalfDoneAsync(chain, newLeaf);
        if (pivotAsked) await File.WriteAllTextAsync(leafPath + ".lsm-pivot", "asked");
        var pid = (await hypervisor.DescribeVmAsync(vm.Id)).Pid!.Value;
        using (var qemu = System.Diagnostics.Process.GetProcessById(pid))
        {
            qemu.Kill();
            await qemu.WaitForExitAsync();
        }
        // libvirt learns of the death a moment later; until then a start would adopt the dead domain instead
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while ((await hypervisor.ListVmsAsync()).Any(v => v.Id == vm.Id && v.Running) && DateTime.UtcNow < deadline)
            await Task.Delay(50);
        await hypervisor.DisposeAsync();

        var restarted = Host("host-1", guestExport: true);
        var spec = new VmSpec(vm.Id, "switch", [await _pool.ResolveChainAsync(_b.Id, chain.Image)]);
        if (pivotAsked)
        {
            var refused = await ContractAssert.FailsWithAsync(ErrorCodes.SwitchOutcomeUnknown, () => restarted.StartVmAsync(spec));
            Assert.Contains(".lsm-switch", refused.Message);
            Assert.True(File.Exists(leafPath + ".lsm-switch") && File.Exists(leafPath) && File.Exists(leafPath + ".lsm-pivot"), "both candidates and the mark are kept");
            return;
        }
        var started = await restarted.StartVmAsync(spec);
        Assert.False(File.Exists(leafPath + ".lsm-switch"));
        Assert.Equal(written, await ReadBackAsync(started.Drive(chain.Image)));
    }

    private const long WrittenAt = 40L << 20;

    /// <summary>A guest-exporting host-1 runs a VM on a chain of domain A, live-snapshotted onto a new leaf on B; the guest wrote 64 KiB (FUA) into that leaf.</summary>
    private async Task<(LibvirtHypervisor Hypervisor, SeededChain Chain, VmInfo Vm, VolumeId NewLeaf, byte[] Written)> WritingOnANewLeafAsync(int pattern)
    {
        var hypervisor = Host("host-1", guestExport: true);
        var chain = await ChainSeeder.SeedAsync(_a, FileLayerData.WriteAsync);
        var vm = await hypervisor.StartVmAsync(new VmSpec(VmId.New(), "switch", [await _pool.ResolveChainAsync(_a.Id, chain.Image)]));
        var newLeaf = VolumeId.New();
        await _b.CreateVolumeAsync(new NewVolume(chain.Image, newLeaf, VolumeFormat.Cow, chain.Capacity, new VolumeRef(_a.Id, chain.Leaf), Owner: TestOwners.Default), _a);
        var drive = await hypervisor.LiveSnapshotAsync(vm.Id, chain.Image, chain.LayerOn(_b, newLeaf));
        Assert.NotNull(drive.SwitchDuration); // the snapshot, timed by the adapter
        var written = Enumerable.Range(0, 65536).Select(i => (byte)(i * pattern)).ToArray();
        await using (var guest = await NbdClient.ConnectAsync(drive.GuestSocket, drive.ExportName))
        {
            await guest.WriteAsync(WrittenAt, written, fua: true);
        }
        return (hypervisor, chain, vm, newLeaf, written);
    }

    /// <summary>What a switch stopped before its pivot leaves: the running layer linked aside as P.lsm-switch, an empty overlay at P. Returns P.</summary>
    private async Task<string> LeaveASwitchHalfDoneAsync(SeededChain chain, VolumeId newLeaf)
    {
        var leafPath = _b.Locate(chain.Image, newLeaf);
        LibvirtNative.HardLink(leafPath, leafPath + ".lsm-switch");
        await Processes.ProcessRunner.RunCheckedAsync("qemu-img", ["create", "-q", "-f", "qcow2", leafPath + ".lsm-fresh", "64M"], ErrorCodes.QemuImgFailed);
        File.Move(leafPath + ".lsm-fresh", leafPath, overwrite: true);
        return leafPath;
    }

    private static async Task<byte[]> ReadBackAsync(DriveState drive)
    {
        var read = new byte[65536];
        await using var guest = await NbdClient.ConnectAsync(drive.GuestSocket, drive.ExportName);
        await guest.ReadAsync(WrittenAt, read);
        return read;
    }

    private LibvirtHypervisor Host(string name, bool guestExport = false)
    {
        var hypervisor = new LibvirtHypervisor(new LibvirtHypervisorOptions { RunDirectory = Path.Combine(_root, name), GuestNbdExport = guestExport });
        _hypervisors.Add(hypervisor);
        return hypervisor;
    }

    public async Task DisposeAsync()
    {
        foreach (var hypervisor in _hypervisors) await hypervisor.DisposeAsync();
        foreach (var name in new[] { "host-1", "host-2" })
        {
            await using var stopper = new LibvirtHypervisor(new LibvirtHypervisorOptions { RunDirectory = Path.Combine(_root, name) });
            foreach (var vm in await stopper.AdoptRunningVmsAsync()) await stopper.StopVmAsync(vm.Id);
        }
        FileLayerData.DeleteRoot(_root);
    }
}
