using System.Globalization;
using System.Xml.Linq;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Hypervisor.Libvirt;

/// <summary>One of our drives as libvirt describes it now.</summary>
/// <param name="Target">libvirt's name for the disk (<c>vda</c>…): what the block APIs take.</param>
/// <param name="OpenChain">The chain libvirt has open, base → leaf.</param>
/// <param name="MirrorPath">The destination of a running block copy, or null.</param>
/// <param name="MirrorReady">libvirt's <c>ready='yes'</c> on that copy.</param>
internal sealed record LibvirtDisk(ImageId Image, string Target, IReadOnlyList<string> OpenChain, string? MirrorPath, bool MirrorReady);

/// <summary>Our domains as libvirt reads them back: who started them, the VM's name, the drives by image id.</summary>
/// <param name="GuestSocket">The NBD socket of the stand-in guest's export, or empty when the domain has none.</param>
internal sealed record LibvirtDomainView(string Owner, string VmName, string GuestSocket, IReadOnlyList<LibvirtDisk> Disks)
{
    public LibvirtDisk Disk(VmId vm, ImageId image) =>
        Disks.FirstOrDefault(d => d.Image == image)
        ?? throw new OperationFailedException(ErrorCodes.ImageNotFound, $"VM {vm} has no drive for image {image}");
}

/// <summary>
/// The domain XML this host writes and reads. A drive is named by its image id through libvirt's user alias
/// (<c>&lt;alias name='ua-IMAGE'/&gt;</c>), so the image ↔ target mapping is read back from libvirt itself; the
/// host that started the domain and the VM's own name sit in our namespace in <c>&lt;metadata&gt;</c>.
/// </summary>
internal static class LibvirtDomainXml
{
    public static readonly XNamespace Lsm = "urn:x-livemigration-akka:libvirt:1";
    private static readonly XNamespace QemuNs = "http://libvirt.org/schemas/domain/qemu/1.0";
    private const string AliasPrefix = "ua-";

    public static string DomainName(string prefix, VmId vm) => prefix + vm.Value.ToString("D");

    /// <summary>
    /// A transient <c>type='qemu'</c> domain: no OS to boot, one virtio qcow2 disk per drive with its whole backing
    /// chain written out in <c>&lt;backingStore&gt;</c> (nothing is probed from image headers).
    /// With <paramref name="shareWritableForExport"/> each disk's device shares write access (<c>share-rw</c>, a
    /// <c>qemu:override</c>), which the test guest's NBD export on the same node needs.
    /// </summary>
    public static string ForNewDomain(VmSpec spec, string domainName, string owner, int memoryMiB, bool shareWritableForExport, string guestSocket)
    {
        var devices = new XElement("devices");
        var overrides = new XElement(QemuNs + "override");
        for (var i = 0; i < spec.Drives.Count; i++)
        {
            var drive = spec.Drives[i];
            var alias = AliasPrefix + drive.Image.Value.ToString("D");
            devices.Add(new XElement("disk", new XAttribute("type", "file"), new XAttribute("device", "disk"),
                new XElement("driver", new XAttribute("name", "qemu"), new XAttribute("type", FormatName(drive.Leaf.Format))),
                new XElement("source", new XAttribute("file", drive.Leaf.Path)),
                BackingStore(drive.Layers, drive.Layers.Count - 2),
                new XElement("target", new XAttribute("dev", TargetName(i)), new XAttribute("bus", "virtio")),
                new XElement("alias", new XAttribute("name", alias))));
            overrides.Add(new XElement(QemuNs + "device", new XAttribute("alias", alias),
                new XElement(QemuNs + "frontend",
                    new XElement(QemuNs + "property", new XAttribute("name", "share-rw"), new XAttribute("type", "bool"), new XAttribute("value", "true")))));
        }
        // Fewer default devices: a faster start and nothing the migration does not need.
        devices.Add(new XElement("controller", new XAttribute("type", "usb"), new XAttribute("model", "none")));
        devices.Add(new XElement("memballoon", new XAttribute("model", "none")));
        var domain = new XElement("domain", new XAttribute("type", "qemu"), new XAttribute(XNamespace.Xmlns + "qemu", QemuNs),
            new XElement("name", domainName),
            new XElement("uuid", spec.Id.Value.ToString("D")),
            new XElement("metadata", new XElement(Lsm + "vm", new XAttribute(XNamespace.Xmlns + "lsm", Lsm),
                new XAttribute("owner", owner), new XAttribute("name", spec.Name), new XAttribute("guest-socket", guestSocket))),
            new XElement("memory", new XAttribute("unit", "MiB"), memoryMiB.ToString(CultureInfo.InvariantCulture)),
            new XElement("vcpu", "1"),
            new XElement("os", new XElement("type", new XAttribute("arch", "x86_64"), "hvm")),
            new XElement("on_poweroff", "destroy"),
            new XElement("on_reboot", "destroy"),
            new XElement("on_crash", "destroy"),
            devices);
        if (shareWritableForExport) domain.Add(overrides);
        return domain.ToString(SaveOptions.DisableFormatting);
    }

    /// <summary>The destination of a block copy (the file exists: the copy reuses it).</summary>
    public static string CopyDestination(string path, VolumeFormat format) =>
        new XElement("disk", new XAttribute("type", "file"),
            new XElement("source", new XAttribute("file", path)),
            new XElement("driver", new XAttribute("type", FormatName(format)))).ToString(SaveOptions.DisableFormatting);

    /// <summary>An external, disk-only snapshot of one disk onto an existing overlay; every other disk is left out.</summary>
    public static string DiskSnapshot(LibvirtDomainView view, string target, string overlayPath) =>
        new XElement("domainsnapshot",
            new XElement("disks", view.Disks.Select(d => d.Target == target
                ? new XElement("disk", new XAttribute("name", d.Target), new XAttribute("snapshot", "external"), new XAttribute("type", "file"),
                    new XElement("driver", new XAttribute("type", "qcow2")),
                    new XElement("source", new XAttribute("file", overlayPath)))
                : new XElement("disk", new XAttribute("name", d.Target), new XAttribute("snapshot", "no")))))
            .ToString(SaveOptions.DisableFormatting);

    /// <summary>Reads our metadata and drives; null for a domain this project did not start.</summary>
    public static LibvirtDomainView? Parse(string xml)
    {
        var domain = XElement.Parse(xml);
        var ours = domain.Element("metadata")?.Element(Lsm + "vm");
        if (ours is null) return null;
        var disks = new List<LibvirtDisk>();
        foreach (var disk in domain.Element("devices")?.Elements("disk") ?? [])
        {
            var alias = disk.Element("alias")?.Attribute("name")?.Value;
            if (alias is null || !alias.StartsWith(AliasPrefix, StringComparison.Ordinal)
                || !Guid.TryParseExact(alias[AliasPrefix.Length..], "D", out var image)) continue;
            var target = disk.Element("target")?.Attribute("dev")?.Value ?? "";
            var leafFirst = new List<string>();
            if (disk.Element("source")?.Attribute("file")?.Value is { } leaf) leafFirst.Add(leaf);
            for (var backing = disk.Element("backingStore"); backing?.Element("source")?.Attribute("file")?.Value is { } path;
                 backing = backing.Element("backingStore"))
                leafFirst.Add(path);
            leafFirst.Reverse();
            var mirror = disk.Element("mirror");
            var mirrorPath = mirror?.Element("source")?.Attribute("file")?.Value ?? mirror?.Attribute("file")?.Value;
            disks.Add(new LibvirtDisk(new ImageId(image), target, leafFirst, mirrorPath, mirror?.Attribute("ready")?.Value == "yes"));
        }
        return new LibvirtDomainView(ours.Attribute("owner")?.Value ?? "", ours.Attribute("name")?.Value ?? "",
            ours.Attribute("guest-socket")?.Value ?? "", disks);
    }

    private static XElement BackingStore(IReadOnlyList<ChainLayer> layers, int index)
    {
        if (index < 0) return new XElement("backingStore"); // the end of the chain, said explicitly
        var layer = layers[index];
        return new XElement("backingStore", new XAttribute("type", "file"),
            new XElement("format", new XAttribute("type", FormatName(layer.Format))),
            new XElement("source", new XAttribute("file", layer.Path)),
            BackingStore(layers, index - 1));
    }

    private static string FormatName(VolumeFormat format) => format == VolumeFormat.Cow ? "qcow2" : "raw";

    /// <summary>vda … vdz, then vdaa …: libvirt's virtio disk names.</summary>
    private static string TargetName(int index) =>
        index < 26 ? "vd" + (char)('a' + index) : "vd" + (char)('a' + index / 26 - 1) + (char)('a' + index % 26);
}
