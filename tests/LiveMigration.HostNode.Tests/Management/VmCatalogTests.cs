using LiveMigration.HostNode.Management;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Tests.Management;

/// <summary>The durable VM record's switch intents (DESIGN §7.1): what leaves a drive in doubt, and what does not.</summary>
public sealed class VmCatalogTests : IDisposable
{
    private readonly string _dataDirectory = Directory.CreateTempSubdirectory("lsm-catalog-").FullName;
    private readonly ImageId _image = new(Guid.NewGuid());
    private readonly VolumeRef _source = new(new DomainId(Guid.NewGuid()), new VolumeId(Guid.NewGuid()));
    private readonly VolumeRef _destination = new(new DomainId(Guid.NewGuid()), new VolumeId(Guid.NewGuid()));

    public void Dispose() => Directory.Delete(_dataDirectory, recursive: true);

    private CatalogedVm Vm(VolumeRef leaf) => new(new VmId(Guid.NewGuid()), "vm1", [new DiskLeaf(_image, leaf)]);

    [Fact]
    public void A_switch_to_another_leaf_is_pending_until_recorded()
    {
        var vm = Vm(_source).WithPending(_image, _destination);
        Assert.Equal(_destination, vm.PendingOf(_image)?.Leaf);
        var recorded = vm.WithLeaf(_image, _destination);
        Assert.Null(recorded.PendingOf(_image));
        Assert.Equal(_destination, recorded.LeafOf(_image)?.Leaf);
    }

    /// <summary>A fence outlives every rewrite of the record and the host's restart, and names one migration's switch of one drive.</summary>
    [Fact]
    public void A_fenced_switch_stays_fenced_across_record_rewrites_and_a_restart_and_fences_nothing_else()
    {
        var vm = Vm(_source);
        var (migration, other) = (MigrationId.New(), MigrationId.New());
        var catalog = new VmCatalog(_dataDirectory);
        catalog.Fence(vm.Id, _image, migration); // before any record: a probe of a VM whose record could not be made
        catalog.Save(vm);
        catalog.Update(vm.Id, () => vm, record => record.WithLeaf(_image, _destination));
        catalog.Fence(vm.Id, _image, migration);

        var restarted = new VmCatalog(_dataDirectory);
        Assert.True(restarted.IsFenced(vm.Id, _image, migration));
        Assert.False(restarted.IsFenced(vm.Id, _image, other));
        Assert.False(restarted.IsFenced(vm.Id, new ImageId(Guid.NewGuid()), migration));
        Assert.Equal(_destination, Assert.Single(restarted.All()).LeafOf(_image)?.Leaf); // the fences file is no record
        restarted.Remove(vm.Id);
        Assert.False(new VmCatalog(_dataDirectory).IsFenced(vm.Id, _image, migration));
    }

    [Fact]
    public void A_late_switch_to_the_recorded_leaf_leaves_nothing_pending()
    {
        // H1b: a late copy of a pivot that took effect long ago begins "a switch" to where the drive already is.
        var vm = Vm(_destination).WithPending(_image, _destination);
        Assert.Null(vm.PendingOf(_image));
        Assert.Empty(vm.Switching);
    }

    [Fact]
    public void A_record_written_before_the_rule_with_a_pending_switch_to_its_own_leaf_is_read_as_not_pending()
    {
        var catalog = new VmCatalog(_dataDirectory);
        var vm = Vm(_destination) with { Pending = [new DiskLeaf(_image, _destination)] };
        catalog.Save(vm);
        var read = catalog.Find(vm.Id)!;
        Assert.Null(read.PendingOf(_image));
        // a real switch begun is kept across a write and a read
        catalog.Save(read.WithPending(_image, _source));
        Assert.Equal(_source, catalog.Find(vm.Id)!.PendingOf(_image)?.Leaf);
    }

    [Fact]
    public void Records_kept_in_memory_are_the_ones_on_disk_a_new_catalog_reads_and_an_unreadable_record_fails_only_what_needs_it()
    {
        var catalog = new VmCatalog(_dataDirectory);
        var (first, second) = (Vm(_source), Vm(_destination) with { Name = "vm2" });
        catalog.Save(first);
        Assert.Equal([first.Id], catalog.All().Select(v => v.Id));
        catalog.Save(second);
        catalog.Update(first.Id, () => throw new InvalidOperationException("it is there"), v => v.WithLeaf(_image, _destination));
        catalog.Remove(second.Id);

        // what the catalog answers from memory is what a catalog reading the folder afresh (a restarted host) finds
        var reread = new VmCatalog(_dataDirectory);
        Assert.Equal(_destination, reread.Find(first.Id)?.LeafOf(_image)?.Leaf);
        Assert.Equal(_destination, catalog.Find(first.Id)?.LeafOf(_image)?.Leaf);
        Assert.Null(reread.Find(second.Id));
        Assert.Null(catalog.Find(second.Id));

        // a record damaged on disk: reading it fails with the reason, the other VM's record still reads
        var third = Vm(_source) with { Name = "vm3" };
        File.WriteAllText(Path.Combine(_dataDirectory, "vms", $"{third.Id}.json"), "{ not json");
        var damaged = new VmCatalog(_dataDirectory);
        Assert.Equal(ErrorCodes.IoError, Assert.Throws<OperationFailedException>(() => damaged.Find(third.Id)).Code);
        Assert.Throws<OperationFailedException>(() => damaged.All());
        Assert.Equal(first.Id, damaged.Find(first.Id)?.Id);
        // written again whole, it reads
        damaged.Save(third);
        Assert.Equal(["vm1", "vm3"], damaged.All().Select(v => v.Name));
    }
}
