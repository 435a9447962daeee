using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Hosting;
using LiveMigration.HostNode.Hypervisor.Libvirt;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.Shared.Model;
using Microsoft.Extensions.Configuration;

namespace LiveMigration.HostNode.Tests.Libvirt;

/// <summary>The domain XML we write and read, without libvirtd.</summary>
public sealed class LibvirtDomainXmlTests
{
    private static readonly ImageId Image = ImageId.New();

    [Fact]
    public void A_new_domain_describes_the_whole_chain_names_the_drive_by_image_and_carries_our_metadata()
    {
        var vm = VmId.New();
        var layers = new[] { Layer("/sd/a/base", VolumeFormat.Raw), Layer("/sd/a/mid", VolumeFormat.Cow), Layer("/sd/a/leaf", VolumeFormat.Cow) };
        var xml = LibvirtDomainXml.ForNewDomain(new VmSpec(vm, "web & db", [new DriveChain(Image, layers)]), "lsm-" + vm, "/run/host-1", 64,
            shareWritableForExport: true, guestSocket: "/run/s/x.nbd");

        Assert.Contains($"<uuid>{vm}</uuid>", xml);
        Assert.Contains("share-rw", xml);
        Assert.Contains("<format type=\"raw\" />", xml.Replace("/>", " />").Replace("  />", " />"));
        var view = LibvirtDomainXml.Parse(xml)!;
        Assert.Equal("/run/host-1", view.Owner);
        Assert.Equal("web & db", view.VmName);
        Assert.Equal("/run/s/x.nbd", view.GuestSocket);
        var disk = Assert.Single(view.Disks);
        Assert.Equal(Image, disk.Image);
        Assert.Equal("vda", disk.Target);
        Assert.Equal(layers.Select(l => l.Path), disk.OpenChain);
        Assert.Null(disk.MirrorPath);
    }

    [Fact]
    public void Libvirts_live_xml_is_read_base_first_with_a_running_copy_and_a_domain_without_our_metadata_is_not_ours()
    {
        var live = $"""
            <domain type='qemu' id='3'><name>lsm-x</name>
              <metadata><lsm:vm xmlns:lsm="urn:x-livemigration-akka:libvirt:1" owner="/o" name="n" guest-socket=""/></metadata>
              <devices>
                <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
                  <source file='/b/leaf' index='3'/>
                  <backingStore type='file' index='4'><format type='qcow2'/><source file='/b/mid'/>
                    <backingStore type='file' index='5'><format type='raw'/><source file='/b/base'/><backingStore/></backingStore>
                  </backingStore>
                  <mirror type='file' file='/c/leaf' format='qcow2' job='copy' ready='yes'><format type='qcow2'/><source file='/c/leaf' index='6'/></mirror>
                  <target dev='vda' bus='virtio'/><alias name='ua-{Image}'/>
                </disk>
                <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><alias name='ide0-1-0'/></disk>
              </devices>
            </domain>
            """;
        var disk = Assert.Single(LibvirtDomainXml.Parse(live)!.Disks);
        Assert.Equal(["/b/base", "/b/mid", "/b/leaf"], disk.OpenChain);
        Assert.Equal("/c/leaf", disk.MirrorPath);
        Assert.True(disk.MirrorReady);
        Assert.Null(LibvirtDomainXml.Parse("<domain type='kvm'><name>someone-elses</name><devices/></domain>"));
    }

    [Fact]
    public void A_disk_snapshot_names_only_the_drive_that_moves()
    {
        var view = new LibvirtDomainView("/o", "n", "", [
            new LibvirtDisk(Image, "vda", ["/a"], null, false), new LibvirtDisk(ImageId.New(), "vdb", ["/b"], null, false)]);
        var xml = LibvirtDomainXml.DiskSnapshot(view, "vda", "/dst/new-leaf");
        Assert.Contains("<disk name=\"vda\" snapshot=\"external\" type=\"file\"><driver type=\"qcow2\" /><source file=\"/dst/new-leaf\" /></disk>", xml.Replace("/>", " />").Replace("  />", " />"));
        Assert.Contains("<disk name=\"vdb\" snapshot=\"no\"", xml);
    }

    private static ChainLayer Layer(string path, VolumeFormat format) => new(new VolumeRef(DomainId.New(), VolumeId.New()), path, format);
}

/// <summary>The interop against a real libvirtd: errors carry libvirt's message and number, lookups, memory handed back.</summary>
[Collection(LibvirtCollection.Name)]
public sealed class LibvirtNativeTests(LibvirtDaemonFixture daemon)
{
    private readonly LibvirtDaemonFixture _daemon = daemon;

    [Fact]
    public void An_unreachable_uri_fails_with_libvirts_own_message()
    {
        GC.KeepAlive(_daemon);
        var e = Assert.Throws<OperationFailedException>(() => LibvirtNative.Open("qemu+unix:///system?socket=/nonexistent/libvirt-sock"));
        Assert.Equal(ErrorCodes.IoError, e.Code);
        Assert.Contains("/nonexistent/libvirt-sock", e.Message);
        Assert.NotEqual(0, LibvirtNative.LibvirtCode(e));
    }

    [Fact]
    public void An_unknown_uuid_is_no_domain_and_listing_hands_back_every_handle()
    {
        using var connection = LibvirtNative.Open("qemu:///system");
        Assert.Null(LibvirtNative.LookupByUuid(connection, Guid.NewGuid()));
        Assert.Null(LibvirtNative.LookupByName(connection, "lsm-" + Guid.NewGuid()));
        var domains = LibvirtNative.ListAllDomains(connection, LibvirtNative.ListDomainsActive);
        foreach (var domain in domains)
        {
            Assert.False(domain.IsInvalid);
            domain.Dispose();
        }
    }

    [Fact]
    public async Task Calls_on_a_destroyed_domain_fail_as_VM_NOT_RUNNING_with_libvirts_message()
    {
        var root = Contract.Real.FileLayerData.NewShortRoot();
        Directory.CreateDirectory(root);
        try
        {
            var leaf = Path.Combine(root, "leaf.qcow2");
            await Processes.ProcessRunner.RunCheckedAsync("qemu-img", ["create", "-q", "-f", "qcow2", leaf, "16M"], ErrorCodes.QemuImgFailed);
            var vm = VmId.New();
            var xml = LibvirtDomainXml.ForNewDomain(new VmSpec(vm, "interop", [new DriveChain(ImageId.New(),
                [new ChainLayer(new VolumeRef(DomainId.New(), VolumeId.New()), leaf, VolumeFormat.Cow)])]), "lsm-" + vm, root, 64, false, "");
            using var connection = LibvirtNative.Open("qemu:///system");
            using var domain = LibvirtNative.CreateDomain(connection, xml);
            Assert.True(LibvirtNative.IsActive(domain));
            Assert.Contains(leaf, LibvirtNative.GetXmlDesc(domain, "desc"));
            Assert.Null(LibvirtNative.GetBlockJobInfo(domain, "vda", "job"));

            LibvirtNative.Destroy(domain, "destroy");

            var e = Assert.Throws<OperationFailedException>(() => LibvirtNative.GetBlockJobInfo(domain, "vda", "job of the destroyed domain"));
            Assert.Equal(ErrorCodes.VmNotRunning, e.Code);
            Assert.StartsWith("job of the destroyed domain failed: ", e.Message);
            Assert.Null(LibvirtNative.LookupByUuid(connection, vm.Value));
        }
        finally
        {
            Contract.Real.FileLayerData.DeleteRoot(root);
        }
    }
}

public sealed class HostNodeSettingsLibvirtTests
{
    [Fact]
    public void The_libvirt_hypervisor_is_chosen_with_its_uri_and_guest_export_switches()
    {
        var settings = HostNodeSettings.From(Config(("HostNode:Hypervisor", "libvirt"), ("HostNode:LibvirtUri", "qemu+ssh://h/system"),
            ("HostNode:LibvirtGuestExport", "true")));
        Assert.Equal("libvirt", settings.Hypervisor);
        Assert.Equal("qemu+ssh://h/system", settings.LibvirtUri);
        Assert.True(settings.LibvirtGuestExport);
        var defaults = HostNodeSettings.From(Config(("HostNode:Hypervisor", "libvirt")));
        Assert.Equal("qemu:///system", defaults.LibvirtUri);
        Assert.False(defaults.LibvirtGuestExport);
        Assert.Equal("HostNode:LibvirtUri", HostNodeSettings.Switches["--libvirt-uri"]);
    }

    [Fact]
    public void An_unknown_hypervisor_or_a_bad_export_flag_is_refused()
    {
        Assert.Contains("qmp, libvirt", Assert.Throws<ArgumentException>(() => HostNodeSettings.From(Config(("HostNode:Hypervisor", "xen")))).Message);
        Assert.Contains("--libvirt-guest-export", Assert.Throws<ArgumentException>(() =>
            HostNodeSettings.From(Config(("HostNode:Hypervisor", "libvirt"), ("HostNode:LibvirtGuestExport", "yes")))).Message);
    }

    [Fact]
    public void The_SPMs_bound_on_copies_at_once_defaults_to_ten_takes_zero_for_none_and_refuses_what_is_not_a_count()
    {
        Assert.Equal(SpmActor.DefaultMaxConcurrentCopies, HostNodeSettings.From(Config()).SpmMaxCopies);
        Assert.Equal(0, HostNodeSettings.From(Config(("HostNode:SpmMaxCopies", "0"))).SpmMaxCopies);
        Assert.Equal(3, HostNodeSettings.From(Config(("HostNode:SpmMaxCopies", "3"))).SpmMaxCopies);
        Assert.Equal("HostNode:SpmMaxCopies", HostNodeSettings.Switches["--spm-max-copies"]);
        foreach (var bad in new[] { "-1", "ten", "10001", "2.5" })
            Assert.Contains("--spm-max-copies", Assert.Throws<ArgumentException>(() => HostNodeSettings.From(Config(("HostNode:SpmMaxCopies", bad)))).Message);
    }

    private static IConfiguration Config(params (string Key, string Value)[] values) =>
        new ConfigurationBuilder().AddInMemoryCollection(values.Select(v => new KeyValuePair<string, string?>(v.Key, v.Value))).Build();
}
