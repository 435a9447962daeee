using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Hypervisor.Sim;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Sim;

/// <summary>Writing data into a sim volume is saying how much it holds.</summary>
internal static class SimData
{
    public static async Task WriteAsync(IStorageDomain domain, ImageId image, VolumeId volume, long offset, long length)
    {
        var sim = Assert.IsType<SimStorageDomain>(domain);
        var current = await sim.DescribeVolumeAsync(image, volume);
        // a preallocated volume holds its capacity already: data fills it, it does not grow
        sim.SeedAllocated(image, volume, Math.Min(current.Capacity, current.AllocatedBytes + length));
    }
}

public sealed class SimStorageDomainContractTests : StorageDomainContract
{
    protected override Task<IStorageDomain> CreateDomainAsync(string name, long capacityBytes) =>
        Task.FromResult<IStorageDomain>(new SimStorageDomain(DomainId.New(), name, capacityBytes));

    protected override Task WriteLayerDataAsync(IStorageDomain domain, ImageId image, VolumeId volume, long offset, long length, byte pattern) =>
        SimData.WriteAsync(domain, image, volume, offset, length);

    protected override Task<IAsyncDisposable> HoldOpenAsync(IStorageDomain domain, ImageId image, VolumeId volume) =>
        Task.FromResult<IAsyncDisposable>(new SimHold(Assert.IsType<SimStorageDomain>(domain).HoldOpen(image, volume)));

    private sealed class SimHold(IDisposable hold) : IAsyncDisposable
    {
        public ValueTask DisposeAsync()
        {
            hold.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}

public sealed class SimHypervisorContractTests : HypervisorContract
{
    private readonly SimHost _host = new("contract-host");

    protected override Task<(IStorageDomain Source, IStorageDomain Destination)> CreateDomainsAsync() =>
        Task.FromResult<(IStorageDomain, IStorageDomain)>((
            new SimStorageDomain(DomainId.New(), "sim-a", 1L << 30),
            new SimStorageDomain(DomainId.New(), "sim-b", 1L << 30)));

    protected override Task WriteLayerDataAsync(IStorageDomain domain, ImageId image, VolumeId volume, long offset, long length, byte pattern) =>
        SimData.WriteAsync(domain, image, volume, offset, length);

    protected override IHypervisor CreateHypervisor(StoragePool pool) => new SimHypervisor(_host, pool);

    protected override Task KillVmProcessAsync(VmInfo vm)
    {
        _host.KillVm(vm.Id);
        return Task.CompletedTask;
    }

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        await _host.DisposeAsync();
    }
}
